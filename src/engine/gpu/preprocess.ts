/**
 * A small WGSL preprocessor, so that structural variants (transposes, accumulate, f16, subgroups) live in
 * the .wgsl file itself and TypeScript never assembles shader bodies. Supported directives, each on its own
 * line: `#include "name.wgsl"`, `#if EXPR`, `#elif EXPR`, `#else`, `#endif`, where EXPR is `NAME`,
 * `!NAME`, `NAME == value`, `NAME != value`, or `A && B` / `A || B` of those (no parentheses). A name is
 * true when it is defined and neither false, 0 nor ''. Values are substituted nowhere: tunables are WGSL
 * `override` constants and shapes are uniforms.
 */
export type DefineValue = string | number | boolean;
export type Defines = Readonly<Record<string, DefineValue>>;

export class ShaderPreprocessError extends Error {
  override name = 'ShaderPreprocessError';
}

function truthy(v: DefineValue | undefined): boolean {
  return v !== undefined && v !== false && v !== 0 && v !== '' && v !== '0' && v !== 'false';
}

function evalAtom(atom: string, defines: Defines, where: string): boolean {
  const t = atom.trim();
  const cmp = /^([A-Za-z_]\w*)\s*(==|!=)\s*([\w.-]+)$/.exec(t);
  if (cmp) {
    const value = defines[cmp[1]!];
    const equal = value !== undefined && String(value) === cmp[3];
    return cmp[2] === '==' ? equal : !equal;
  }
  const neg = /^!\s*([A-Za-z_]\w*)$/.exec(t);
  if (neg) return !truthy(defines[neg[1]!]);
  if (/^[A-Za-z_]\w*$/.test(t)) return truthy(defines[t]);
  throw new ShaderPreprocessError(`${where}: cannot parse condition '${atom}'`);
}

export function evalCondition(expr: string, defines: Defines, where = 'condition'): boolean {
  if (expr.includes('(') || expr.includes(')')) throw new ShaderPreprocessError(`${where}: parentheses are not supported in '${expr}'`);
  return expr.split('||').some((conj) => conj.split('&&').every((atom) => evalAtom(atom, defines, where)));
}

interface Frame {
  /** Whether the enclosing region emits lines. */
  parentActive: boolean;
  /** Whether some branch of this #if chain was taken already. */
  taken: boolean;
  active: boolean;
  sawElse: boolean;
}

/**
 * Expands directives. `resolveInclude(name)` returns the source of an included file; includes are
 * expanded once each (a second #include of the same name is skipped), recursively.
 */
export function preprocess(
  source: string,
  defines: Defines,
  fileName: string,
  resolveInclude: (name: string) => string | undefined = () => undefined,
  included: Set<string> = new Set(),
): string {
  const out: string[] = [];
  const stack: Frame[] = [];
  const lines = source.split('\n');
  const active = () => (stack.length === 0 ? true : stack[stack.length - 1]!.active);
  lines.forEach((line, i) => {
    const where = `${fileName}:${i + 1}`;
    const m = /^\s*#(\w+)\s*(.*?)\s*$/.exec(line);
    if (!m) {
      out.push(active() ? line : '');
      return;
    }
    const [, directive, rest] = m as unknown as [string, string, string];
    switch (directive) {
      case 'if': {
        const parentActive = active();
        const cond = parentActive && evalCondition(rest, defines, where);
        stack.push({ parentActive, taken: cond, active: cond, sawElse: false });
        break;
      }
      case 'elif': {
        const f = stack[stack.length - 1];
        if (!f || f.sawElse) throw new ShaderPreprocessError(`${where}: #elif without #if`);
        const cond = f.parentActive && !f.taken && evalCondition(rest, defines, where);
        f.active = cond;
        f.taken ||= cond;
        break;
      }
      case 'else': {
        const f = stack[stack.length - 1];
        if (!f || f.sawElse) throw new ShaderPreprocessError(`${where}: #else without #if`);
        f.sawElse = true;
        f.active = f.parentActive && !f.taken;
        f.taken = true;
        break;
      }
      case 'endif':
        if (!stack.pop()) throw new ShaderPreprocessError(`${where}: #endif without #if`);
        break;
      case 'include': {
        if (!active()) break;
        const name = /^"([^"]+)"$/.exec(rest)?.[1];
        if (!name) throw new ShaderPreprocessError(`${where}: #include needs a quoted file name`);
        if (included.has(name)) break;
        const body = resolveInclude(name);
        if (body === undefined) throw new ShaderPreprocessError(`${where}: cannot include '${name}'`);
        included.add(name);
        out.push(preprocess(body, defines, name, resolveInclude, included));
        break;
      }
      default:
        throw new ShaderPreprocessError(`${where}: unknown directive #${directive}`);
    }
    // Directive lines become empty lines so that compiler line numbers still point into the file.
    if (directive !== 'include') out.push('');
  });
  if (stack.length) throw new ShaderPreprocessError(`${fileName}: ${stack.length} unterminated #if`);
  return out.join('\n');
}
