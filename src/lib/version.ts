/** The program version, reported by `--version` and in the agent's hello. Kept in step with package.json by a unit test. */
export const VERSION = '0.1.0';
