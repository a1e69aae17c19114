// The counter-based dropout hash shared by lora.wgsl and quant4.wgsl (included, not a kernel family): element
// (m, k) of a LoRA layer's input X is dropped when dropout_hash(seed, m·in + k) < threshold (= p·2^32). The
// same function is mirrored in lora.ts (loraDropoutHash) for the CPU references.

fn lowbias32(v: u32) -> u32 {
  var x = v;
  x ^= x >> 16u;
  x *= 0x7feb352du;
  x ^= x >> 15u;
  x *= 0x846ca68bu;
  x ^= x >> 16u;
  return x;
}

fn dropout_hash(seed: u32, i: u32) -> u32 {
  let s = lowbias32(seed);
  return lowbias32(lowbias32(i ^ s) + s);
}
