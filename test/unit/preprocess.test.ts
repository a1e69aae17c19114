import { describe, expect, it } from 'vitest';
import { evalCondition, preprocess } from '../../src/engine/gpu/preprocess.ts';

describe('WGSL preprocessor', () => {
  it('selects branches and keeps line numbers', () => {
    const src = ['a', '#if X', 'x', '#elif Y', 'y', '#else', 'z', '#endif', 'b'].join('\n');
    expect(preprocess(src, { X: true }, 'f').split('\n')).toEqual(['a', '', 'x', '', '', '', '', '', 'b']);
    expect(preprocess(src, { Y: 1 }, 'f').split('\n')[4]).toBe('y');
    expect(preprocess(src, {}, 'f').split('\n')[6]).toBe('z');
  });
  it('handles nesting inside an inactive branch', () => {
    const src = ['#if A', '#if B', 'ab', '#else', 'a', '#endif', '#else', 'none', '#endif'].join('\n');
    expect(preprocess(src, { B: true }, 'f').trim()).toBe('none');
    expect(preprocess(src, { A: true }, 'f').trim()).toBe('a');
  });
  it('evaluates comparisons, negation, && and ||', () => {
    expect(evalCondition('DT == f16', { DT: 'f16' })).toBe(true);
    expect(evalCondition('DT != f16', { DT: 'f32' })).toBe(true);
    expect(evalCondition('!A && B', { B: true })).toBe(true);
    expect(evalCondition('A || B', { A: 0, B: false })).toBe(false);
  });
  it('includes once, recursively', () => {
    const files: Record<string, string> = { 'c.wgsl': 'C\n#include "d.wgsl"', 'd.wgsl': 'D' };
    const out = preprocess('#include "c.wgsl"\n#include "c.wgsl"\nmain', {}, 'm', (n) => files[n]);
    expect(out.split('\n').filter(Boolean)).toEqual(['C', 'D', 'main']);
  });
  it('reports malformed directives with file and line', () => {
    expect(() => preprocess('a\n#else', {}, 'k.wgsl')).toThrow(/k\.wgsl:2/);
    expect(() => preprocess('#if A', {}, 'k.wgsl')).toThrow(/unterminated/);
    expect(() => preprocess('#frobnicate', {}, 'k.wgsl')).toThrow(/unknown directive/);
    expect(() => preprocess('#include "x.wgsl"', {}, 'k.wgsl')).toThrow(/cannot include 'x.wgsl'/);
  });
});
