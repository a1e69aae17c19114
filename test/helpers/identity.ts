import { generateIdentityRecords } from '../../src/data/identity.ts';
import { detectMapper, mapRecords } from '../../src/data/mappers.ts';
import { prepareDataset, type PreparedDataset } from '../../src/data/pipeline.ts';
import { loadTokenizer, type TokenizerSource } from '../../src/data/tokenizer.ts';

/**
 * The demo flow's identity dataset (an assistant "Nova", made by "Ada", English, 16 samples) through the
 * data pipeline with a model's tokenizer: packed rows of at most `maxLength` tokens, no eval split.
 */
export function identityDataset(tokenizer: TokenizerSource, maxLength: number): PreparedDataset {
  const records = generateIdentityRecords({ assistantName: 'Nova', owner: 'Ada', description: 'I am Nova.', languages: ['en'], repeat: 1 });
  return prepareDataset(loadTokenizer(tokenizer), mapRecords(records, detectMapper(records).choice!).samples, { maxLength, pack: true, seed: 1, evalSplit: 0 });
}
