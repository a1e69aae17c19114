/**
 * Where every LoRA matrix of a model lives in the optimizer's flat buffers, and the conversion between
 * that layout and PEFT's tensors.
 *
 * A LoRA *group* is one PEFT module of one layer: one A [r, in] and one B [out, r]. Its *members* are the
 * internal projections its output feeds: one for Llama/Qwen modules, three for InternLM2's packed wqkv
 * (q, k and v share A; B's rows, packed per KV group in PEFT's tensor, are split into B_q, B_k, B_v in our
 * q|k|v order). Members share U = X·Aᵀ in the forward, and their G = dY·B terms sum in the backward.
 */
import { OptimizerLayout, type ParamSpec } from '../kernels/adamw.ts';
import type { ModelSpec } from './config.ts';
import { loraModuleParams, loraModuleShape, loraScale, peftKey, type LoraModule, type PeftLoraConfig, type PeftTensor } from './peft.ts';
import { gatherRows, layerParamShape, scatterRows, wqkvRowRanges, type LayerParamKind, type RowRange } from './weights.ts';

export interface LoraMember {
  /** The internal projection (weights.ts kind) this member's B rows feed. */
  readonly kind: LayerParamKind;
  /** Optimizer parameter name of this member's B rows. */
  readonly bName: string;
  readonly out: number;
  /** Rows of PEFT's B that belong to this member, in order (null: all of them). */
  readonly peftRows: readonly RowRange[] | null;
}

export interface LoraGroup {
  readonly layer: number;
  readonly module: LoraModule;
  readonly aName: string;
  readonly in: number;
  readonly out: number;
  readonly members: readonly LoraMember[];
  readonly peftA: string;
  readonly peftB: string;
}

export class LoraLayout {
  readonly groups: readonly LoraGroup[];
  readonly optimizer: OptimizerLayout;
  readonly rank: number;
  readonly scale: number;

  constructor(
    readonly spec: ModelSpec,
    readonly config: Pick<PeftLoraConfig, 'r' | 'loraAlpha' | 'targetModules' | 'useRslora' | 'layersToTransform'>,
  ) {
    this.rank = config.r;
    this.scale = loraScale(config);
    const groups: LoraGroup[] = [];
    const layers = config.layersToTransform ?? Array.from({ length: spec.layers }, (_, i) => i);
    for (const layer of layers) {
      for (const module of config.targetModules) {
        const { in: inF, out } = loraModuleShape(spec, module);
        const kinds = loraModuleParams(spec.family, module);
        const base = `layers.${layer}.${module}`;
        let members: LoraMember[];
        if (kinds.length === 1) {
          members = [{ kind: kinds[0]!, bName: `${base}.lora_B`, out, peftRows: null }];
        } else {
          const ranges = wqkvRowRanges(spec.nHeads, spec.nKvHeads, spec.headDim);
          members = kinds.map((kind) => ({
            kind,
            bName: `${base}.lora_B.${kind}`,
            out: layerParamShape(spec, kind)[0]!,
            peftRows: ranges[kind as 'q' | 'k' | 'v'],
          }));
        }
        groups.push({ layer, module, aName: `${base}.lora_A`, in: inF, out, members, peftA: peftKey(spec.family, layer, module, 'A'), peftB: peftKey(spec.family, layer, module, 'B') });
      }
    }
    this.groups = groups;
    const params: ParamSpec[] = [];
    for (const g of groups) {
      params.push({ name: g.aName, shape: [this.rank, g.in] });
      for (const m of g.members) params.push({ name: m.bName, shape: [m.out, this.rank] });
    }
    this.optimizer = new OptimizerLayout(params);
  }

  /** The group that feeds projection `kind` of `layer`, with the member index, if LoRA targets it. */
  groupFor(layer: number, kind: LayerParamKind): { group: LoraGroup; member: number } | null {
    for (const group of this.groups) {
      if (group.layer !== layer) continue;
      const member = group.members.findIndex((m) => m.kind === kind);
      if (member >= 0) return { group, member };
    }
    return null;
  }

  /** PEFT tensors → one flat buffer in optimizer order (zeros in the alignment gaps). */
  packPeft(tensors: ReadonlyMap<string, PeftTensor>): Float32Array {
    const flat = new Float32Array(this.optimizer.total);
    const put = (name: string, data: Float32Array) => {
      const slot = this.optimizer.slot(name);
      if (data.length !== slot.length) throw new Error(`LoRA '${name}': ${data.length} values for [${slot.shape.join(', ')}]`);
      flat.set(data, slot.offset);
    };
    for (const g of this.groups) {
      const A = tensors.get(g.peftA);
      const B = tensors.get(g.peftB);
      if (!A || !B) throw new Error(`adapter lacks ${!A ? g.peftA : g.peftB}`);
      put(g.aName, A.data);
      for (const m of g.members) put(m.bName, m.peftRows ? gatherRows(B.data, this.rank, m.peftRows) : B.data);
    }
    return flat;
  }

  /** One flat buffer (params or grads) → PEFT tensors keyed like PEFT's save_pretrained output. */
  unpackPeft(flat: Float32Array): Map<string, PeftTensor> {
    const out = new Map<string, PeftTensor>();
    const get = (name: string) => {
      const slot = this.optimizer.slot(name);
      return flat.slice(slot.offset, slot.offset + slot.length);
    };
    for (const g of this.groups) {
      out.set(g.peftA, { shape: [this.rank, g.in], data: get(g.aName) });
      let B: Float32Array;
      if (g.members.length === 1) B = get(g.members[0]!.bName);
      else {
        B = new Float32Array(g.out * this.rank);
        for (const m of g.members) scatterRows(B, this.rank, m.peftRows!, get(m.bName));
      }
      out.set(g.peftB, { shape: [g.out, this.rank], data: B });
    }
    return out;
  }
}
