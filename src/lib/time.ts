/** Timestamps as the API and the agent state show them. */

/** `yyyy-MM-ddTHH:mm:ssZ`, the timestamp format of Huawei's v3 resources */
export function formatTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}
