import { describe, expect, it } from 'vitest';
import { appUnderTest, screenshot, watchPage } from './browser.ts';

const app = appUnderTest();

describe('Data section in the app', () => {
  it('takes a JSONL file, detects the mapping, prepares rows and reports a broken line', async () => {
    const page = await app.browser().newPage({ viewport: { width: 1280, height: 800 } });
    const { errors } = watchPage(page);
    await page.goto(`${app.url()}#/data`);
    const lines = [
      JSON.stringify({ instruction: 'Say hi', input: '', output: 'Hi!' }),
      '{"instruction": "broken',
      JSON.stringify({ instruction: 'Add 2 and 3', input: '', output: '5' }),
    ];
    await page.locator('wt-data-drop input[type=file]').setInputFiles({ name: 'alpaca.jsonl', mimeType: 'application/json', buffer: Buffer.from(lines.join('\n') + '\n') });
    const prepare = page.getByRole('button', { name: 'Prepare dataset' });
    await expect.poll(() => prepare.isEnabled(), { timeout: 60_000 }).toBe(true);
    // Playwright's text locators pierce the elements' shadow roots.
    await page.getByText(/alpaca/i).first().waitFor();
    await page.getByText(/line 2/i).first().waitFor();
    await prepare.click();
    await page.getByText(/supervised/i).first().waitFor({ timeout: 60_000 });
    await screenshot(page, 'data-section');
    expect(errors).toEqual([]);
  });
});
