/** Content digests shared by the layers above (document digests, change detection). */
import { createHash } from 'node:crypto';

/** Lower-case hex sha256 of the UTF-8 text. */
export function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
