/**
 * A small interpreter for the subset of Go's text/template that Ollama chat templates use, so tests can
 * render a Modelfile TEMPLATE and compare it with the Jinja chat template: text, `{{- … -}}` whitespace
 * trimming, `if / else if / else / end`, `range $i, $_ := .X` and `range .X`, `$v := …`, fields (`.A`,
 * `$.A`, `$v.A`), string/number literals, parentheses, and the functions eq, ne, and, or, not, len, slice.
 * Unknown syntax throws, so a template using more than this is noticed rather than misrendered.
 */

type Node =
  | { t: 'text'; s: string }
  | { t: 'expr'; e: string }
  | { t: 'assign'; name: string; e: string }
  | { t: 'if'; branches: { cond: string | null; body: Node[] }[] }
  | { t: 'range'; idx: string | null; elem: string | null; e: string; body: Node[] };

interface Tok {
  kind: 'text' | 'action';
  s: string;
}

function lex(src: string): Tok[] {
  const out: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const open = src.indexOf('{{', i);
    if (open < 0) {
      out.push({ kind: 'text', s: src.slice(i) });
      break;
    }
    let text = src.slice(i, open);
    let body = '';
    const close = src.indexOf('}}', open);
    if (close < 0) throw new Error(`go template: unclosed action at ${open}`);
    body = src.slice(open + 2, close);
    if (body.startsWith('- ')) {
      text = text.replace(/\s+$/, '');
      body = body.slice(1);
    }
    let trimAfter = false;
    if (body.endsWith(' -')) {
      trimAfter = true;
      body = body.slice(0, -1);
    }
    out.push({ kind: 'text', s: text }, { kind: 'action', s: body.trim() });
    i = close + 2;
    if (trimAfter) while (i < src.length && /\s/.test(src[i]!)) i++;
  }
  return out;
}

function parse(toks: Tok[]): Node[] {
  let p = 0;
  const block = (ends: RegExp): { nodes: Node[]; end: string } => {
    const nodes: Node[] = [];
    while (p < toks.length) {
      const tk = toks[p++]!;
      if (tk.kind === 'text') {
        if (tk.s) nodes.push({ t: 'text', s: tk.s });
        continue;
      }
      const a = tk.s;
      if (ends.test(a)) return { nodes, end: a };
      let m: RegExpMatchArray | null;
      if ((m = a.match(/^if\s+(.+)$/))) {
        const branches: { cond: string | null; body: Node[] }[] = [];
        let cond: string | null = m[1]!;
        for (;;) {
          const r = block(/^(else\b.*|end)$/);
          branches.push({ cond, body: r.nodes });
          if (r.end === 'end') break;
          const elif = r.end.match(/^else\s+if\s+(.+)$/);
          if (elif) cond = elif[1]!;
          else if (r.end === 'else') cond = null;
          else throw new Error(`go template: bad '${r.end}'`);
        }
        nodes.push({ t: 'if', branches });
      } else if ((m = a.match(/^range\s+(?:(\$\w*)\s*,\s*(\$\w*)\s*:=\s*)?(.+)$/))) {
        const r = block(/^end$/);
        nodes.push({ t: 'range', idx: m[1] ?? null, elem: m[2] ?? null, e: m[3]!, body: r.nodes });
      } else if ((m = a.match(/^(\$\w+)\s*:=\s*(.+)$/))) {
        nodes.push({ t: 'assign', name: m[1]!, e: m[2]! });
      } else if (/^(end|else)\b/.test(a)) {
        throw new Error(`go template: unexpected '${a}'`);
      } else {
        nodes.push({ t: 'expr', e: a });
      }
    }
    if (ends.source !== '^$') throw new Error('go template: missing {{ end }}');
    return { nodes, end: '' };
  };
  return block(/^$/).nodes;
}

type Value = unknown;

function truthy(v: Value): boolean {
  if (Array.isArray(v)) return v.length > 0;
  return !!v;
}

function evalExpr(src: string, dot: Value, root: Value, vars: Map<string, Value>): Value {
  const toks = src.match(/"(?:[^"\\]|\\.)*"|\(|\)|[^\s()]+/g) ?? [];
  let p = 0;
  const operand = (): Value => {
    const t = toks[p++];
    if (t === undefined) throw new Error(`go template: expression '${src}' ends early`);
    if (t === '(') {
      const v = pipeline();
      if (toks[p++] !== ')') throw new Error(`go template: ')' expected in '${src}'`);
      return v;
    }
    if (t.startsWith('"')) return JSON.parse(t) as string;
    if (/^-?\d+$/.test(t)) return Number(t);
    const field = (base: Value, path: string[]) => path.reduce<Value>((o, k) => (o as Record<string, Value>)[k], base);
    if (t === '.') return dot;
    if (t.startsWith('$.')) return field(root, t.slice(2).split('.'));
    if (t.startsWith('.')) return field(dot, t.slice(1).split('.'));
    if (t.startsWith('$')) {
      const [name, ...path] = t.split('.');
      if (!vars.has(name!)) throw new Error(`go template: undefined variable ${name}`);
      return field(vars.get(name!), path);
    }
    throw new Error(`go template: unknown operand '${t}' in '${src}'`);
  };
  const FUNCS: Record<string, (...a: Value[]) => Value> = {
    eq: (a, ...b) => b.some((x) => x === a),
    ne: (a, b) => a !== b,
    and: (...a) => a.reduce((x, y) => (truthy(x) ? y : x)),
    or: (...a) => a.reduce((x, y) => (truthy(x) ? x : y)),
    not: (a) => !truthy(a),
    len: (a) => (a as unknown[] | string).length,
    slice: (a, i, j) => (a as unknown[]).slice(i as number, j as number | undefined),
  };
  const pipeline = (): Value => {
    const t = toks[p];
    if (t !== undefined && FUNCS[t]) {
      p++;
      const args: Value[] = [];
      while (p < toks.length && toks[p] !== ')') args.push(operand());
      return FUNCS[t](...args);
    }
    return operand();
  };
  const v = pipeline();
  if (p !== toks.length) throw new Error(`go template: trailing tokens in '${src}'`);
  return v;
}

function run(nodes: Node[], dot: Value, root: Value, vars: Map<string, Value>, out: string[]): void {
  for (const n of nodes) {
    switch (n.t) {
      case 'text':
        out.push(n.s);
        break;
      case 'expr': {
        const v = evalExpr(n.e, dot, root, vars);
        out.push(v === undefined || v === null ? '' : String(v));
        break;
      }
      case 'assign':
        vars.set(n.name, evalExpr(n.e, dot, root, vars));
        break;
      case 'if': {
        const b = n.branches.find((x) => x.cond === null || truthy(evalExpr(x.cond, dot, root, vars)));
        if (b) run(b.body, dot, root, new Map(vars), out);
        break;
      }
      case 'range': {
        const list = evalExpr(n.e, dot, root, vars) as Value[];
        list.forEach((el, i) => {
          const scope = new Map(vars);
          if (n.idx) scope.set(n.idx, i);
          if (n.elem) scope.set(n.elem, el);
          run(n.body, el, root, scope, out);
        });
        break;
      }
    }
  }
}

/** Renders a Go template with `data` as both dot and $. */
export function renderGoTemplate(template: string, data: Record<string, unknown>): string {
  const out: string[] = [];
  run(parse(lex(template)), data, data, new Map(), out);
  return out.join('');
}
