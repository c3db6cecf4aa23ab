/** `Environment=` read as systemd reads it (test/lib/systemd-unit.ts), and the bench agent's environment taken from the unit that way (bench/footprint.ts). */
import { describe, expect, it } from 'vitest';
import { unitEnvironment } from '../../bench/footprint.js';
import { environment, environmentWords } from '../lib/systemd-unit.js';

describe('Environment= as systemd reads it', () => {
  it('keeps a quoted assignment whole, wherever the quotes are, with several assignments on one line', () => {
    expect(environment(['"NODE_OPTIONS=--max-semi-space-size=1 --max-old-space-size=256" MALLOC_ARENA_MAX=2 TZ=\'Europe/Berlin x\' B="q r"'])).toEqual({
      NODE_OPTIONS: '--max-semi-space-size=1 --max-old-space-size=256',
      MALLOC_ARENA_MAX: '2',
      TZ: 'Europe/Berlin x',
      B: 'q r',
    });
  });

  it('the systemd.exec(5) example', () => {
    expect(environment(['"VAR1=word1 word2" VAR2=word3 "VAR3=$word 5 6"'])).toEqual({ VAR1: 'word1 word2', VAR2: 'word3', VAR3: '$word 5 6' });
  });

  it('decodes C escapes (also inside quotes) and %% ; keeps $ as it is', () => {
    expect(environmentWords('A=x\\sy "B=\\"q\\"\\t" C=\\x41\\101 D=50%% E=$HOME')).toEqual(['A=x y', 'B="q"\t', 'C=AA', 'D=50%', 'E=$HOME']);
  });

  it('over several lines: a later assignment overrides, an empty value resets, a word that is not NAME=VALUE is ignored', () => {
    expect(environment(['A=1 B=2', 'A=3 notanassignment 1X=4 =5', 'C=6'])).toEqual({ A: '3', B: '2', C: '6' });
    expect(environment(['A=1', '', 'B=2'])).toEqual({ B: '2' });
    expect(environment(['A= B=""'])).toEqual({ A: '', B: '' });
  });

  it('refuses what systemd would ignore the line for, and specifiers it cannot expand', () => {
    expect(() => environmentWords('"A=1 B=2')).toThrow(/unterminated quote/);
    expect(() => environmentWords('A=1\\')).toThrow(/trailing backslash/);
    expect(() => environmentWords('A=\\q')).toThrow(/unknown escape/);
    expect(() => environmentWords('A=%n')).toThrow(/specifier %n/);
  });
});

describe('bench footprint: the agent environment from its unit', () => {
  it('reads a quoted NODE_OPTIONS with several flags as one variable, next to the others on its line and on later lines', () => {
    const unit = ['[Unit]', 'Description=x', '[Service]', '# Environment=IGNORED=1', 'Environment=MALLOC_ARENA_MAX=2 "NODE_OPTIONS=--a --b"', 'Environment=NODE_OPTIONS="--c --d" X=1', 'ExecStart=/bin/true'].join('\n');
    expect(unitEnvironment({}, unit)).toEqual({ MALLOC_ARENA_MAX: '2', NODE_OPTIONS: '--c --d', X: '1' });
    expect(unitEnvironment({}, unit.replace(/^Environment=NODE_OPTIONS.*$/m, ''))).toEqual({ MALLOC_ARENA_MAX: '2', NODE_OPTIONS: '--a --b' });
  });

  it('reads the shipped agent unit (its malloc and V8 settings)', () => {
    expect(unitEnvironment()).toMatchObject({ MALLOC_ARENA_MAX: '2', NODE_OPTIONS: '--max-semi-space-size=1' });
  });
});
