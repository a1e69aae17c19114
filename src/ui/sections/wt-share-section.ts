import { LitElement, css, html, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import * as Comlink from 'comlink';
import type { ExportDType, ExportFile, HubProgress, ImportedAdapterSummary, ModelInfo } from '../../engine/api.ts';
import { formatBytes } from '../../engine/gpu/errors.ts';
import { getEngine } from '../engine-client.ts';
import { theme } from '../theme.ts';
import type { RecipeData } from '../data/wt-data-section.ts';
import { INCOMPLETE_EXPORT_NOTE, removeExportLeftovers } from '../../engine/share/export-note.ts';
import { PendingExports, type PendingExport } from '../store/pending-export.ts';

/** The File System Access API's folder picker (Chromium); absent elsewhere, then folders come from <input webkitdirectory>. */
type DirectoryPicker = (o?: { mode?: 'read' | 'readwrite'; id?: string }) => Promise<FileSystemDirectoryHandle>;
type AsyncDirectory = FileSystemDirectoryHandle & { entries(): AsyncIterableIterator<[string, FileSystemHandle]> };

function directoryPicker(): DirectoryPicker | null {
  const w = window as Window & { showDirectoryPicker?: DirectoryPicker };
  return typeof w.showDirectoryPicker === 'function' ? w.showDirectoryPicker.bind(window) : null;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The user closed a picker: not an error worth showing. */
function isCancel(e: unknown): boolean {
  return e instanceof DOMException && e.name === 'AbortError';
}

function download(file: ExportFile, mime: string): void {
  const url = URL.createObjectURL(new Blob([file.bytes as BlobPart], { type: mime }));
  const a = document.createElement('a');
  a.href = url;
  a.download = file.name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A picked folder's files by path relative to it (two levels deep: an adapter folder may sit in one sub-folder). */
async function folderFiles(dir: FileSystemDirectoryHandle, prefix = '', depth = 0, out = new Map<string, Blob>()): Promise<Map<string, Blob>> {
  for await (const [name, handle] of (dir as AsyncDirectory).entries()) {
    if (handle.kind === 'file') out.set(prefix + name, await (handle as FileSystemFileHandle).getFile());
    else if (depth < 1) await folderFiles(handle as FileSystemDirectoryHandle, `${prefix}${name}/`, depth + 1, out);
  }
  return out;
}

const BYTES: Record<ExportDType, number> = { f32: 4, f16: 2, bf16: 2 };

/**
 * Share: the adapter as a PEFT zip, a GGUF LoRA or an Ollama package; the base merged with it as a Hugging
 * Face checkpoint (written into a folder the user picks, or zipped for small models); and the way back:
 * an adapter .zip or folder from someone else, checked against the loaded base and installed for Chat.
 */
@customElement('wt-share-section')
export class WtShareSection extends LitElement {
  static override styles = [
    theme,
    css`
      :host { display: block; }
      section { margin: 0 0 1.4rem; }
      h3 { margin: 0 0 0.4rem; font-size: 1.05rem; }
      .row { display: flex; flex-wrap: wrap; gap: 0.6rem; align-items: center; margin: 0.5rem 0; }
      button, .file { font: inherit; padding: 0.35rem 0.9rem; border-radius: var(--wt-radius); border: 1px solid var(--wt-accent); background: var(--wt-accent); color: var(--wt-accent-text); cursor: pointer; }
      button.secondary, .file { background: transparent; color: var(--wt-accent); }
      button[disabled] { opacity: 0.5; cursor: not-allowed; }
      .file input { display: none; }
      select { font: inherit; padding: 0.2rem 0.4rem; }
      progress { width: min(28rem, 100%); }
      .error { color: var(--wt-error); white-space: pre-wrap; }
      .warn { color: var(--wt-warn); }
      .ok { color: var(--wt-ok); }
      .muted { color: var(--wt-muted); }
      ul { margin: 0.3rem 0; padding-left: 1.2rem; }
      .banner { border: 1px solid var(--wt-warn); border-radius: var(--wt-radius); padding: 0.5rem 0.9rem; margin: 0 0 1rem; }
      .banner p { margin: 0.2rem 0 0.5rem; }
    `,
  ];

  @property({ attribute: false }) model: ModelInfo | null = null;
  @property({ type: Boolean }) tuned = false;
  /** The prepared dataset (Data section), for the training recipe. */
  @property({ attribute: false }) recipe: RecipeData | null = null;
  @state() private error = '';
  @state() private saved = '';
  @state() private busy = '';
  @state() private dtype: ExportDType = 'f16';
  @state() private merge: { done: number; total: number; tensor: string } | null = null;
  @state() private imported: ImportedAdapterSummary | null = null;
  @state() private importError = '';
  @state() private hubRepo = '';
  @state() private hubProgress: HubProgress | null = null;
  /** A folder export a closed tab never finished (found at page load), until removed or kept. */
  @state() private leftover: PendingExport | null = null;
  @state() private leftoverNote = '';
  private readonly pendingExports = new PendingExports();

  override connectedCallback(): void {
    super.connectedCallback();
    void this.pendingExports
      .get()
      .then((p) => {
        if (p && !this.busy) this.leftover = p;
      })
      .catch(() => undefined); // no IndexedDB (private mode): nothing remembered, nothing to offer
  }

  /** Removes the unfinished export's files (asking for the folder again: permissions do not outlive the tab). */
  private async removeLeftover(): Promise<void> {
    const p = this.leftover;
    if (!p) return;
    try {
      const folder = p.folder as FileSystemDirectoryHandle & { requestPermission?: (d: { mode: 'readwrite' }) => Promise<PermissionState> };
      if (folder.requestPermission && (await folder.requestPermission({ mode: 'readwrite' })) !== 'granted') {
        this.leftoverNote = `No permission to change “${p.folderName}”: its files were left as they are.`;
        return;
      }
      const removed = await removeExportLeftovers(folder);
      this.leftoverNote =
        removed === null
          ? `“${p.folderName}” holds no unfinished export any more: nothing to remove.`
          : `Removed the unfinished export from “${p.folderName}”: ${removed.length ? removed.join(', ') : 'no files'} and its note. Files of your own there were not touched.`;
    } catch (e) {
      this.leftoverNote = `Could not clean up “${p.folderName}”: ${errorText(e)}. Delete the files listed in its ${INCOMPLETE_EXPORT_NOTE} by hand.`;
      return;
    }
    this.leftover = null;
    await this.pendingExports.end().catch(() => undefined);
  }

  private async keepLeftover(): Promise<void> {
    this.leftover = null;
    this.leftoverNote = '';
    await this.pendingExports.end().catch(() => undefined);
  }

  private renderLeftover() {
    const p = this.leftover;
    if (!p && !this.leftoverNote) return nothing;
    return html`<div class="banner" role="status" data-testid="export-leftover">
      ${p
        ? html`<p>A merged export into the folder “${p.folderName}” (started ${new Date(p.startedAt).toLocaleString()}) did not finish: the tab was closed or the browser stopped. The files it wrote are not a complete checkpoint.</p>
            <button data-testid="export-leftover-remove" @click=${() => void this.removeLeftover()}>Remove its files</button>
            <button class="secondary" data-testid="export-leftover-keep" @click=${() => void this.keepLeftover()}>Keep them</button>`
        : nothing}
      ${this.leftoverNote ? html`<p data-testid="export-leftover-note">${this.leftoverNote}</p>` : nothing}
    </div>`;
  }

  private modelSlug(): string {
    return (this.model?.id ?? 'model').replace(/[^\w.-]+/g, '_');
  }

  /** Runs one export at a time, showing what it does and any error. */
  private async run(what: string, work: () => Promise<string>): Promise<void> {
    if (this.busy) return;
    this.error = '';
    this.busy = what;
    try {
      this.saved = await work();
    } catch (e) {
      // The user's own cancel (the folder picker closed, or Cancel during a merge) is not an error.
      if (e instanceof Error && e.name === 'MergeCancelledError') this.saved = `${what}: cancelled; the files it had written were removed.`;
      else if (!isCancel(e)) this.error = `${what}: ${errorText(e)}`;
    } finally {
      this.busy = '';
      this.merge = null;
    }
  }

  private exportZip(): Promise<void> {
    return this.run('PEFT adapter', async () => {
      const zip = await getEngine().exportAdapter();
      const name = `${this.modelSlug()}-lora-adapter.zip`;
      download({ name, bytes: zip }, 'application/zip');
      return `${name} (${formatBytes(zip.byteLength)}): adapter_config.json + adapter_model.safetensors as PEFT writes them, a model card, the chat template and stop tokens.`;
    });
  }

  private exportAs(format: 'gguf' | 'ollama'): Promise<void> {
    return this.run(format === 'gguf' ? 'GGUF LoRA' : 'Ollama package', async () => {
      const file = await getEngine().exportAdapterAs(format);
      download(file, format === 'gguf' ? 'application/octet-stream' : 'application/zip');
      return format === 'gguf'
        ? `${file.name} (${formatBytes(file.bytes.byteLength)}): load it over the base's GGUF with llama.cpp's --lora, or as ADAPTER in an Ollama Modelfile.`
        : `${file.name} (${formatBytes(file.bytes.byteLength)}): adapter.gguf and a Modelfile; its README says what to run.`;
    });
  }

  private exportRecipe(): Promise<void> {
    return this.run('Training recipe', async () => {
      const r = this.recipe!;
      const zip = await getEngine().exportRecipe(r.samples, { maxLength: r.maxLength, pack: r.pack });
      const name = `${this.modelSlug()}-training-recipe.zip`;
      download({ name, bytes: zip }, 'application/zip');
      return `${name} (${formatBytes(zip.byteLength)}): an XTuner config, a transformers + PEFT script and the dataset as JSONL (${r.samples.length} samples); its README says how to run them and bring the adapter back.`;
    });
  }

  private progress() {
    return Comlink.proxy((p: { tensor: string; done: number; total: number }) => (this.merge = p));
  }

  private exportMergedToFolder(): Promise<void> {
    return this.run('Merged model', async () => {
      const dir = await directoryPicker()!({ mode: 'readwrite', id: 'webtune-merged' });
      // Remembered while it runs: if the tab closes mid-export, the next page load offers to clean up.
      await this.pendingExports.begin(dir, dir.name).catch(() => undefined);
      let r;
      try {
        r = await getEngine().exportMerged(this.dtype, dir, this.progress());
      } finally {
        // Finished, or failed/cancelled: the worker removed what it wrote. Either way nothing is pending.
        await this.pendingExports.end().catch(() => undefined);
      }
      return `${r.files.length} files (${formatBytes(r.totalBytes)} of weights in ${this.dtype}) written into the folder “${dir.name}”: load it with AutoModelForCausalLM.from_pretrained.`;
    });
  }

  private exportMergedZip(): Promise<void> {
    return this.run('Merged model', async () => {
      const r = await getEngine().exportMerged(this.dtype, null, this.progress());
      download(r.zip!, 'application/zip');
      return `${r.zip!.name} (${formatBytes(r.zip!.bytes.byteLength)}): ${r.files.join(', ')}. Unzip it and load the folder with AutoModelForCausalLM.from_pretrained.`;
    });
  }

  private importFrom(input: Uint8Array | Map<string, Blob>, source: string): Promise<void> {
    return this.importing(() => getEngine().importAdapter(input, source));
  }

  /** A PEFT adapter by Hub repo id ("user/name" or "user/name@revision"): downloaded into the cache, then imported. */
  private importFromHub(): Promise<void> {
    const [repo, revision] = this.hubRepo.trim().split('@') as [string, string | undefined];
    this.hubProgress = null;
    return this.importing(() => getEngine().importHubAdapter(repo, revision ? { revision } : {}, Comlink.proxy((p: HubProgress) => (this.hubProgress = p)))).finally(() => (this.hubProgress = null));
  }

  private async importing(run: () => Promise<ImportedAdapterSummary>): Promise<void> {
    if (this.busy) return;
    this.importError = '';
    this.imported = null;
    this.busy = 'Import';
    try {
      this.imported = await run();
      this.dispatchEvent(new CustomEvent('adapter-imported', { detail: this.imported, bubbles: true, composed: true }));
    } catch (e) {
      if (!isCancel(e)) this.importError = errorText(e);
    } finally {
      this.busy = '';
    }
  }

  private async onZip(e: Event): Promise<void> {
    const input = e.target as HTMLInputElement;
    const file = input.files?.[0];
    input.value = '';
    if (!file) return;
    await this.importFrom(new Uint8Array(await file.arrayBuffer()), file.name);
  }

  private async onFolderInput(e: Event): Promise<void> {
    const input = e.target as HTMLInputElement;
    const files = new Map<string, Blob>();
    for (const f of input.files ?? []) files.set(f.webkitRelativePath || f.name, f);
    input.value = '';
    if (files.size === 0) return;
    const top = [...files.keys()][0]!.split('/')[0]!;
    await this.importFrom(files, top);
  }

  private async pickFolder(): Promise<void> {
    try {
      const dir = await directoryPicker()!({ mode: 'read', id: 'webtune-adapter' });
      await this.importFrom(await folderFiles(dir), dir.name);
    } catch (e) {
      if (!isCancel(e)) this.importError = errorText(e);
    }
  }

  private renderExport() {
    const off = !this.tuned || !!this.busy;
    const size = this.model ? this.model.parameters * BYTES[this.dtype] : 0;
    const picker = directoryPicker();
    return html`
      <section>
        <h3>Export the adapter</h3>
        <p class="muted">The zip loads with <code>PeftModel.from_pretrained(base, folder)</code> in transformers/PEFT as it is.</p>
        <div class="row">
          <button data-testid="export-adapter" ?disabled=${off} @click=${() => void this.exportZip()}>PEFT adapter (.zip)</button>
          <button class="secondary" data-testid="export-gguf" ?disabled=${off} @click=${() => void this.exportAs('gguf')}>GGUF LoRA (llama.cpp)</button>
          <button class="secondary" data-testid="export-ollama" ?disabled=${off} @click=${() => void this.exportAs('ollama')}>Ollama (Modelfile + GGUF)</button>
        </div>
        ${!this.tuned ? html`<p class="muted">Train an adapter first (or import one below).</p>` : nothing}
      </section>
      <section>
        <h3>Merged model</h3>
        <p class="muted">The base with the adapter folded in, as a Hugging Face checkpoint (safetensors, config, tokenizer): no PEFT needed to use it.
          ${this.model ? html`About ${formatBytes(size)} in ${this.dtype}.` : nothing}</p>
        <div class="row">
          <label>Weights <select .value=${this.dtype} ?disabled=${!!this.busy} @change=${(e: Event) => (this.dtype = (e.target as HTMLSelectElement).value as ExportDType)}>
            <option value="f16">float16</option><option value="bf16">bfloat16</option><option value="f32">float32</option>
          </select></label>
          ${picker ? html`<button class="secondary" data-testid="export-merged-folder" ?disabled=${off} @click=${() => void this.exportMergedToFolder()}>Merge into a folder…</button>` : nothing}
          <button class="secondary" data-testid="export-merged-zip" ?disabled=${off} @click=${() => void this.exportMergedZip()}>Merge and download (.zip)</button>
        </div>
        ${!picker ? html`<p class="muted">This browser cannot write into a folder; large models need Chrome or Edge (or <code>npm run cli -- merge</code>).</p>` : nothing}
        ${this.merge
          ? html`<progress data-testid="merge-progress" max=${this.merge.total} .value=${this.merge.done}></progress> <span class="muted">${this.merge.done}/${this.merge.total} ${this.merge.tensor}</span>
              <button class="secondary" data-testid="merge-cancel" @click=${() => void getEngine().cancelExport()}>Cancel</button>`
          : nothing}
      </section>
      <section>
        <h3>Training recipe</h3>
        <p class="muted">The same run for a cluster: a ready-to-run XTuner config and a plain transformers + PEFT script with the prepared dataset as JSONL; an adapter trained there imports back below.</p>
        <div class="row">
          <button class="secondary" data-testid="export-recipe" ?disabled=${!this.model || !this.recipe || !!this.busy} @click=${() => void this.exportRecipe()}>Training recipe (.zip)</button>
        </div>
        ${!this.recipe ? html`<p class="muted">Prepare a dataset in the Data section first.</p>` : nothing}
      </section>
      ${this.busy && this.busy !== 'Import' ? html`<p class="muted">${this.busy}: working…</p>` : nothing}
      ${this.saved ? html`<p data-testid="export-done" class="ok">Saved ${this.saved}</p>` : nothing}
      ${this.error ? html`<p class="error" data-testid="export-error">${this.error}</p>` : nothing}
    `;
  }

  private hubStatus() {
    const p = this.hubProgress;
    if (!p) return 'Reading and checking the adapter…';
    const cancel = html` <button class="secondary" data-testid="import-hub-cancel" @click=${() => void getEngine().cancelHubDownload()}>Cancel</button>`;
    if (p.status === 'downloading') return html`${p.file}: ${formatBytes(p.loaded)} of ${formatBytes(p.total)}${cancel}`;
    if (p.status === 'retrying') return html`Connection dropped on ${p.file}; resuming (attempt ${p.attempt})…${cancel}`;
    if (p.status === 'cached' || p.status === 'done') return 'Downloaded; checking the adapter against the base…';
    return html`Contacting the Hub for ${this.hubRepo.trim()}…${cancel}`;
  }

  private renderImport() {
    const off = !this.model || !!this.busy;
    const i = this.imported;
    return html`
      <section>
        <h3>Import an adapter</h3>
        <p class="muted">A PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) for the loaded model, as a .zip, a folder or a Hugging Face Hub repo id. It is checked tensor by tensor against the base and becomes the tuned model in Chat.</p>
        <div class="row">
          <label class="file" ?disabled=${off}>Adapter .zip…<input data-testid="import-zip" type="file" accept=".zip,application/zip" ?disabled=${off} @change=${(e: Event) => void this.onZip(e)} /></label>
          ${directoryPicker()
            ? html`<button class="secondary" data-testid="import-folder" ?disabled=${off} @click=${() => void this.pickFolder()}>Adapter folder…</button>`
            : html`<label class="file">Adapter folder…<input data-testid="import-folder-input" type="file" webkitdirectory ?disabled=${off} @change=${(e: Event) => void this.onFolderInput(e)} /></label>`}
        </div>
        <form class="row" @submit=${(e: Event) => { e.preventDefault(); void this.importFromHub(); }}>
          <input data-testid="import-hub-repo" placeholder="user/adapter-repo (or …@revision)" aria-label="Hub repo id of a PEFT adapter" .value=${this.hubRepo}
            ?disabled=${off} @input=${(e: Event) => (this.hubRepo = (e.target as HTMLInputElement).value)} />
          <button type="submit" data-testid="import-hub" ?disabled=${off || !this.hubRepo.trim()}>Import from the Hub</button>
        </form>
        ${!this.model ? html`<p class="muted">Load its base model in the Model section first.</p>` : nothing}
        ${this.busy === 'Import' ? html`<p class="muted" role="status">${this.hubStatus()}</p>` : nothing}
        ${i
          ? html`<div data-testid="import-done">
              <p class="ok">Installed ${i.source} as the tuned model: LoRA r=${i.r}, alpha=${i.loraAlpha} on ${i.targetModules.join(', ')}${i.baseModel ? html`, trained on ${i.baseModel}` : nothing}. Try it in Chat.</p>
              ${i.warnings.length ? html`<ul class="warn">${i.warnings.map((w) => html`<li>${w}</li>`)}</ul>` : nothing}
            </div>`
          : nothing}
        ${this.importError ? html`<p class="error" data-testid="import-error">${this.importError}</p>` : nothing}
      </section>
    `;
  }

  override render() {
    return html`${this.renderLeftover()}${this.renderExport()}${this.renderImport()}`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'wt-share-section': WtShareSection;
  }
}
