/** Content digests shared by the layers above (document digests, change detection). */
import { createHash } from 'node:crypto';

/** Lower-case hex sha256 of the UTF-8 text (or of the bytes). */
export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
