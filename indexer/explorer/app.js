// NodeAI Hub explorer: lists from the indexer API, live updates from its SSE stream (/stream),
// and the wallet forms (create a job, deposit to and withdraw from the escrow, check a receipt)
// from chain.js.
//
// Everything the chain wrote (CIDs, endpoints, ...) is put in the page as text, never as HTML:
// an endpoint URL is chosen by whoever registers a provider.

import { Chain, UserError, bigIntReviver, describeError, formatDuration, formatTimestamp } from "./chain.js";

const HERE = new URL("./", location.href); // /explorer/
const API = new URL("../", HERE); // the indexer API (the page is served at <api>/explorer/)
const PAGE_SIZE = 100;
const POSITION_EVERY_MS = 4000;
const LIVENESS_EVERY_MS = 30000;
const ZERO_ADDRESS = "0x0000000000000000000000000000000000000000";

const $ = (id) => document.getElementById(id);

let chain = null;
let finalizedHeight = -1;
let headHeight = -1;
const liveness = new Map(); // provider address -> probe result

// -- small helpers ---------------------------------------------------------------------------------
async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text, bigIntReviver);
  } catch {
    body = null;
  }
  if (!response.ok) throw new UserError(body?.error?.message ?? `${url} answered HTTP ${response.status}`);
  if (body === null) throw new UserError(`${url} did not answer JSON`);
  return body;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "object" ? child : String(child));
  }
  return node;
}

// NOTE: one wrapper per cell: on phones the cell is a two-column grid (label, content).
const cell = (label, ...content) => el("td", { "data-label": label }, el("div", {}, ...content));

function shortHex(value, head = 6, tail = 4) {
  const text = String(value ?? "");
  return text.length > head + tail + 1 ? `${text.slice(0, head)}…${text.slice(-tail)}` : text;
}

function address(value) {
  if (!value || value === ZERO_ADDRESS) return el("span", { class: "muted", text: "none" });
  return el("code", { title: value, "data-address": value }, shortHex(value));
}

function hash(value) {
  return value ? el("code", { title: value }, shortHex(value, 10, 6)) : el("span", { class: "muted", text: "none" });
}

function badge(text, tone = "") {
  return el("span", { class: `badge ${tone}`.trim() }, text);
}

function finality(item) {
  const final = Number(item.updated_block) <= finalizedHeight;
  return badge(final ? "final" : "pending", final ? "ok" : "warn");
}

function amount(value) {
  return chain ? chain.formatAmount(value) : String(value ?? "–");
}

/** An amount for a table cell: kept on one line. */
function money(value) {
  return el("span", { class: "nowrap" }, amount(value));
}

function time(unix) {
  const seconds = Number(unix ?? 0);
  if (!seconds) return el("span", { class: "muted", text: "none" });
  const date = new Date(seconds * 1000);
  return el("time", { datetime: date.toISOString() }, date.toLocaleString());
}

function setResult(node, text, tone) {
  node.textContent = text;
  node.classList.toggle("ok", tone === "ok");
  node.classList.toggle("bad", tone === "bad");
  if (tone) node.dataset.tone = tone;
  else delete node.dataset.tone;
}

function showPageError(message) {
  const box = $("page-error");
  box.textContent = message;
  box.hidden = false;
}

// -- collections: an API list kept up to date by the change stream ----------------------------------
class Collection {
  constructor({ kind, sources, tbody, columns, row, accept = () => true, compare, emptyText, onChange }) {
    Object.assign(this, { kind, tbody, columns, row, accept, compare, emptyText, onChange });
    this.sources = sources.map((path) => ({ path, cursor: null }));
    this.items = new Map();
    this.params = {};
    this.flash = null;
    this.moreButton = document.querySelector(`[data-more="${tbody.id.replace("-body", "")}"]`);
    this.moreButton?.addEventListener("click", () => this.loadMore().catch((e) => showPageError(describeError(e))));
  }

  url(path, cursor) {
    const url = new URL(path, API);
    for (const [name, value] of Object.entries(this.params)) if (value) url.searchParams.set(name, value);
    url.searchParams.set("limit", String(PAGE_SIZE));
    if (cursor) url.searchParams.set("cursor", cursor);
    return url;
  }

  async load() {
    this.items.clear();
    const pages = await Promise.all(this.sources.map((source) => getJson(this.url(source.path, null))));
    pages.forEach((page, i) => this.take(this.sources[i], page));
    this.render();
  }

  async loadMore() {
    const open = this.sources.filter((source) => source.cursor);
    const pages = await Promise.all(open.map((source) => getJson(this.url(source.path, source.cursor))));
    pages.forEach((page, i) => this.take(open[i], page));
    this.render();
  }

  take(source, page) {
    for (const item of page.items) if (this.accept(item)) this.items.set(item.key, item);
    source.cursor = page.next_cursor;
  }

  /** A change from /stream: {op, kind, key, block_number, doc}. */
  apply(change) {
    if (change.op === "delete") {
      this.items.delete(change.key);
    } else {
      const previous = this.items.get(change.key);
      const item = {
        ...(previous ?? {}),
        ...change.doc,
        kind: change.doc?.kind ?? change.kind,
        key: change.key,
        created_block: previous?.created_block ?? change.block_number,
        updated_block: change.block_number,
      };
      if (this.accept(item)) {
        this.items.set(change.key, item);
        this.flash = change.key;
      } else {
        this.items.delete(change.key);
      }
    }
    this.render();
  }

  render() {
    const items = [...this.items.values()].sort(this.compare);
    const rows = items.map((item) => {
      const tr = this.row(item);
      tr.dataset.key = item.key;
      if (item.key === this.flash) tr.classList.add("flash");
      return tr;
    });
    if (!rows.length) rows.push(el("tr", { class: "empty" }, el("td", { colspan: this.columns }, this.emptyText())));
    this.tbody.replaceChildren(...rows);
    if (this.moreButton) this.moreButton.hidden = !this.sources.some((source) => source.cursor);
    this.onChange?.(items);
  }
}

const byNumber = (field) => (a, b) => Number(a[field]) - Number(b[field]);
const byText = (field) => (a, b) => String(a[field]).localeCompare(String(b[field]));

const models = new Collection({
  kind: "model",
  sources: ["models", "agents"],
  tbody: $("models-body"),
  columns: 8,
  compare: byNumber("model_id"),
  emptyText: () => "No model registered yet.",
  row: (m) =>
    el(
      "tr",
      {},
      cell("Id", `#${m.model_id}`),
      cell("Kind", m.kind),
      cell("Owner", address(m.owner)),
      cell("Version", `v${m.version}`),
      cell("Price / 1k tokens", money(m.price_per_1k_tokens)),
      cell("Revenue share", `${Number(m.revenue_share_bps) / 100}%`),
      cell("Artifact", el("code", { title: m.artifact_cid }, shortHex(m.artifact_cid, 12, 6))),
      cell("State", m.deprecated ? badge("deprecated", "bad") : badge("active", "ok"), " ", finality(m)),
    ),
  onChange: (items) => fillModelSelect(items),
});

function livenessBadge(provider) {
  const probe = liveness.get(provider.address);
  if (!probe) return badge("unknown");
  if (probe.live) return badge(`up · ${probe.latency_ms} ms`, "ok");
  return el("span", { title: probe.reason ?? "" }, badge(`down${probe.reason ? ` (${probe.reason})` : ""}`, "bad"));
}

const providers = new Collection({
  kind: "provider",
  sources: ["providers"],
  tbody: $("providers-body"),
  columns: 7,
  compare: byText("address"),
  emptyText: () => "No provider registered yet.",
  row: (p) =>
    el(
      "tr",
      {},
      cell("Provider", address(p.address), el("br"), el("small", { class: "muted endpoint" }, el("code", {}, p.endpoint ?? ""))),
      cell("Liveness", livenessBadge(p)),
      cell("Stake", money(p.stake)),
      cell("Bonded", money(p.bonded)),
      cell(
        "Models and price",
        Object.keys(p.models ?? {}).length
          ? el("ul", {}, Object.entries(p.models).map(([id, price]) => el("li", {}, `#${id}: `, money(price))))
          : el("span", { class: "muted", text: "none" }),
      ),
      cell("Jobs done / failed / disputes lost", `${p.jobs_completed} / ${p.jobs_failed} / ${p.disputes_lost}`),
      cell("State", p.registered ? badge("registered", "ok") : badge("unregistered", "bad"), " ", finality(p)),
    ),
  onChange: (items) => fillProviderSelect(items),
});

/** A job's priority provider and window, under its provider; nothing when it has none. */
function priority(job) {
  if (!job.priority_provider || job.priority_provider === ZERO_ADDRESS) return null;
  return el(
    "small",
    { class: "muted priority", "data-priority-provider": job.priority_provider, "data-priority-until": String(job.priority_until) },
    "priority: ", address(job.priority_provider), " until ", time(job.priority_until),
  );
}

const jobStateTone = { OPEN: "warn", CLAIMED: "warn", SUBMITTED: "warn", DISPUTED: "bad", SETTLED: "ok", REFUNDED: "" };

const jobs = new Collection({
  kind: "job",
  sources: ["jobs"],
  tbody: $("jobs-body"),
  columns: 9,
  accept: (job) => !jobs?.params.state || job.state === jobs.params.state,
  compare: byNumber("job_id"),
  emptyText: () => (jobs.params.state ? `No ${jobs.params.state} job.` : "No job yet."),
  row: (j) =>
    el(
      "tr",
      {},
      cell("Job", `#${j.job_id}`),
      cell("State", badge(j.state, jobStateTone[j.state] ?? "")),
      cell("Model", `#${j.model_id}`),
      cell("Requester", address(j.requester)),
      cell("Provider", address(j.provider), priority(j)),
      cell("Max payment", money(j.max_payment)),
      cell("Charge", j.state === "SUBMITTED" || j.state === "DISPUTED" || j.state === "SETTLED" ? money(j.charge) : "–"),
      cell("Deadline", time(j.deadline)),
      cell("Finality", finality(j)),
    ),
});

const channels = new Collection({
  kind: "channel",
  sources: ["channels"],
  tbody: $("channels-body"),
  columns: 7,
  accept: (c) => Boolean(channels?.params.payer) && String(c.payer).toLowerCase() === channels.params.payer.toLowerCase(),
  compare: byText("provider"),
  emptyText: () => (channels.params.payer ? "No deposit from this address." : "No address chosen."),
  onChange: (items) => {
    if (channels?.params.payer) setResult($("balance-result"), balanceSummary(channels.params.payer, items), "ok");
  },
  row: (c) =>
    el(
      "tr",
      {},
      cell("Provider", address(c.provider)),
      cell("Balance", el("strong", { class: "nowrap" }, amount(c.balance))),
      cell("Deposited", money(c.deposited)),
      cell("Redeemed", money(c.total_redeemed)),
      cell("Withdrawn", money(c.withdrawn)),
      cell("Withdrawal", Number(c.unlock_at) ? ["unlocks ", time(c.unlock_at)] : el("span", { class: "muted", text: "none requested" })),
      cell("Finality", finality(c)),
    ),
});

const receipts = new Collection({
  kind: "receipt_batch",
  sources: ["receipts"],
  tbody: $("receipts-body"),
  columns: 7,
  compare: (a, b) => Number(b.block_number) - Number(a.block_number) || String(a.key).localeCompare(String(b.key)),
  emptyText: () => "No receipt batch committed yet.",
  row: (r) =>
    el(
      "tr",
      {},
      cell("Provider", address(r.provider)),
      cell(
        "Merkle root",
        hash(r.root),
        el("br"),
        el("button", { type: "button", class: "link", onclick: () => useRoot(r.root) }, "Check a receipt of this batch"),
      ),
      cell("Receipts", String(r.count)),
      cell("Tokens in / out", `${r.tokens_in} / ${r.tokens_out}`),
      cell("Amount", money(r.amount)),
      cell("Block", String(r.block_number)),
      cell("Finality", finality(r)),
    ),
});

const byKind = { model: models, provider: providers, job: jobs, channel: channels, receipt_batch: receipts };
const collections = Object.values(byKind);

function renderAll() {
  for (const collection of collections) collection.render();
}

// -- selects of the forms ----------------------------------------------------------------------------
function fillSelect(select, options, emptyText) {
  const previous = select.value;
  const nodes = options.map(([value, text]) => el("option", { value }, text));
  if (!nodes.length) nodes.push(el("option", { value: "" }, emptyText));
  select.replaceChildren(...nodes);
  if (options.some(([value]) => value === previous)) select.value = previous;
}

function fillModelSelect(items) {
  const active = items.filter((m) => !m.deprecated);
  fillSelect($("job-model"), active.map((m) => [String(m.model_id), `#${m.model_id} ${m.kind} (${amount(m.price_per_1k_tokens)} / 1k tokens)`]),
    "No active model");
}

function fillProviderSelect(items) {
  const registered = items.filter((p) => p.registered);
  fillSelect($("deposit-provider"), registered.map((p) => [p.address, `${shortHex(p.address)} (${p.endpoint})`]), "No provider");
  // NOTE: the priority provider is a free address field; the list offers the registered ones.
  $("job-priority-options").replaceChildren(...registered.map((p) => el("option", { value: p.address, label: p.endpoint ?? "" })));
}

// -- indexer position, finality and liveness ------------------------------------------------------
function showPosition(position) {
  const changed = position.finalized_height !== finalizedHeight;
  finalizedHeight = position.finalized_height;
  if (position.head !== headHeight) {
    headHeight = position.head;
    // NOTE: a withdrawal unlocks by the chain's clock, which moves only with new blocks.
    if (chain?.wallet) refreshWithdrawStatus();
  }
  const where = position.indexed_height === null ? "nothing indexed yet" : `block ${position.indexed_height} indexed of ${position.head}`;
  $("chain-status").textContent = `Chain ${position.chain_id} · ${where} · final after ${position.confirmations} confirmations`;
  if (changed) renderAll();
}

async function pollPosition() {
  try {
    showPosition(await getJson(new URL("api/position", HERE)));
  } catch (error) {
    $("chain-status").textContent = `Indexer unreachable (${describeError(error)}); retrying`;
  }
  setTimeout(pollPosition, POSITION_EVERY_MS);
}

async function refreshLiveness() {
  try {
    const report = await getJson(new URL("api/liveness", HERE));
    liveness.clear();
    for (const item of report.items) liveness.set(item.address, item);
    providers.render();
  } catch (error) {
    showPageError(`Provider liveness unavailable: ${describeError(error)}`);
  }
  setTimeout(refreshLiveness, LIVENESS_EVERY_MS);
}

// -- live stream ------------------------------------------------------------------------------------
function startStream(afterId) {
  const url = new URL("stream", API);
  url.searchParams.set("after", String(afterId));
  const source = new EventSource(url);
  const live = $("live-status");
  source.addEventListener("open", () => {
    live.textContent = "Live";
    live.className = "badge ok";
  });
  source.addEventListener("error", () => {
    // NOTE: EventSource reconnects by itself, resuming after the Last-Event-ID it saw.
    live.textContent = "Live: reconnecting";
    live.className = "badge warn";
  });
  const onChange = (event) => {
    const change = JSON.parse(event.data, bigIntReviver);
    byKind[change.kind]?.apply(change);
    if (change.kind === "channel") walletEscrow.apply(change);
  };
  source.addEventListener("upsert", onChange);
  source.addEventListener("delete", onChange);
  source.addEventListener("reorg", () => {
    // NOTE: rows above the fork were rebuilt: read the lists again rather than patch them.
    Promise.all([
      ...collections.map((c) => (c === channels && !channels.params.payer ? null : c.load())),
      walletEscrow.load(),
    ]).catch((error) => showPageError(describeError(error)));
  });
}

// -- wallet and forms -------------------------------------------------------------------------------
function setWalletUi(connected) {
  $("job-fieldset").disabled = !connected;
  $("deposit-fieldset").disabled = !connected;
  $("withdraw-fieldset").disabled = !connected;
  $("connect").textContent = connected ? "Disconnect" : "Connect wallet";
  $("wallet-status").textContent = connected ? `Connected: ${chain.wallet.address}` : "No wallet connected";
  if (connected) {
    setResult($("job-result"), "Ready: the job's maximum payment is locked in escrow when it is created.");
    setResult($("deposit-result"), "Ready to deposit.");
    setResult($("withdraw-result"), "Choose a channel: its withdrawal state is shown above the buttons.");
  } else {
    setResult($("job-result"), "Connect a wallet to create a job.");
    setResult($("deposit-result"), "Connect a wallet to deposit.");
    setResult($("withdraw-result"), "Connect a wallet to withdraw.");
  }
  walletEscrow.load().catch((error) => showPageError(describeError(error)));
}

async function connectWallet() {
  if (chain.wallet) {
    chain.disconnect();
    setWalletUi(false);
    return;
  }
  const button = $("connect");
  button.disabled = true;
  try {
    const account = await chain.connect(window.ethereum);
    if (chain.token.decimals === null) await chain.loadToken().then(showTokenSymbol, () => {});
    setWalletUi(true);
    showTimelock();
    if (!$("balance-address").value.trim()) {
      $("balance-address").value = account;
      await showBalances(account);
    }
  } catch (error) {
    $("wallet-status").textContent = describeError(error);
  } finally {
    button.disabled = false;
  }
}

function watchWallet() {
  const ethereum = window.ethereum;
  if (!ethereum?.on) return;
  ethereum.on("accountsChanged", (accounts) => {
    if (!chain.wallet) return;
    chain.disconnect();
    if (accounts?.length) connectWallet();
    else setWalletUi(false);
  });
  ethereum.on("chainChanged", () => {
    if (chain.wallet) {
      chain.disconnect();
      setWalletUi(false);
      $("wallet-status").textContent = "The wallet changed networks: connect again.";
    }
  });
}

async function runForm(form, resultNode, action) {
  // NOTE: every button of the form waits, so one action cannot start while another is signing.
  const buttons = [...form.querySelectorAll("button")];
  for (const button of buttons) button.disabled = true;
  try {
    const message = await action((text) => setResult(resultNode, text));
    setResult(resultNode, message, "ok");
  } catch (error) {
    setResult(resultNode, describeError(error), "bad");
  } finally {
    for (const button of buttons) button.disabled = false;
  }
}

// -- the connected wallet's escrow: its channels (from the indexer, kept live by the stream) -------
const walletEscrow = {
  items: new Map(), // key "payer:provider" -> channel document
  payer: null,

  async load() {
    const payer = chain?.wallet?.address ?? null;
    this.payer = payer;
    this.items.clear();
    if (payer) {
      let cursor = null;
      do {
        const url = new URL("channels", API);
        url.searchParams.set("payer", payer);
        url.searchParams.set("limit", String(PAGE_SIZE));
        if (cursor) url.searchParams.set("cursor", cursor);
        const page = await getJson(url);
        if (this.payer !== payer) return; // the wallet changed meanwhile
        for (const item of page.items) this.items.set(item.key, item);
        cursor = page.next_cursor;
      } while (cursor);
    }
    this.render();
  },

  apply(change) {
    if (!this.payer) return;
    const doc = change.doc ?? {};
    const payer = doc.payer ?? String(change.key).split(":")[0];
    if (String(payer).toLowerCase() !== this.payer.toLowerCase()) return;
    if (change.op === "delete") this.items.delete(change.key);
    else this.items.set(change.key, { ...(this.items.get(change.key) ?? {}), ...doc, key: change.key });
    this.render();
    if (String(doc.provider ?? "").toLowerCase() === $("withdraw-provider").value.toLowerCase()) refreshWithdrawStatus();
  },

  render() {
    const box = $("wallet-escrow");
    if (!this.payer) {
      box.hidden = true;
      fillSelect($("withdraw-provider"), [], "Connect a wallet");
      setResult($("withdraw-status"), "");
      return;
    }
    const items = [...this.items.values()].sort(byText("provider"));
    const total = items.reduce((sum, c) => sum + BigInt(c.balance ?? 0), 0n);
    const funded = items.filter((c) => BigInt(c.balance ?? 0) > 0n);
    const pending = funded.filter((c) => Number(c.unlock_at)).length;
    box.hidden = false;
    box.dataset.total = total.toString();
    setResult(
      box,
      `Your wallet ${shortHex(this.payer)} holds ${amount(total)} in the escrow, in ${funded.length} channel(s)` +
        (pending ? `; ${pending} withdrawal(s) requested.` : "."),
    );
    const before = $("withdraw-provider").value;
    fillSelect(
      $("withdraw-provider"),
      funded.map((c) => [c.provider, `${shortHex(c.provider)}: ${amount(c.balance)}${Number(c.unlock_at) ? " (withdrawal requested)" : ""}`]),
      "No deposit to withdraw",
    );
    if ($("withdraw-provider").value !== before) refreshWithdrawStatus();
  },
};

let withdrawStatusSeq = 0;

/** Shows what the chosen channel allows now, read on chain at the latest block. */
async function refreshWithdrawStatus() {
  const node = $("withdraw-status");
  const provider = $("withdraw-provider").value;
  const seq = ++withdrawStatusSeq;
  if (!chain?.wallet || !provider) {
    setResult(node, chain?.wallet ? "No channel of this wallet holds a deposit." : "");
    node.dataset.state = "empty";
    return;
  }
  try {
    const c = await chain.channel(provider);
    if (seq !== withdrawStatusSeq) return;
    node.dataset.state = c.state;
    node.dataset.unlockAt = c.unlockAt.toString();
    const balance = `Balance ${amount(c.balance)}.`;
    const left = formatDuration(Number(c.unlockAt - c.now));
    const texts = {
      empty: "Nothing deposited in this channel.",
      none: `${balance} No withdrawal requested: request one, then withdraw ${timelockText()} later.`,
      pending: `${balance} Withdrawal pending: it can be completed at ${formatTimestamp(c.unlockAt)} (in ${left}, chain time).`,
      ready: `${balance} The withdrawal unlocked at ${formatTimestamp(c.unlockAt)}: press Withdraw to receive ${amount(c.balance)}.`,
    };
    setResult(node, texts[c.state], c.state === "ready" ? "ok" : undefined);
  } catch (error) {
    if (seq !== withdrawStatusSeq) return;
    node.dataset.state = "error";
    setResult(node, `The channel could not be read: ${describeError(error)}`, "bad");
  }
}

let timelockSeconds = null;

function timelockText() {
  return timelockSeconds === null ? "after the escrow's timelock" : formatDuration(timelockSeconds);
}

async function showTimelock() {
  try {
    timelockSeconds = await chain.withdrawTimelock();
    $("withdraw-help").textContent =
      `Two steps: request the withdrawal, then withdraw ${formatDuration(timelockSeconds)} later (the provider can still redeem your vouchers until then). A new deposit to the channel cancels a pending request.`;
  } catch {
    // NOTE: the help keeps its general wording; the withdraw checks read the timelock again.
  }
}

async function showBalances(payerText) {
  const payer = String(payerText ?? "").trim();
  if (!/^0x[0-9a-fA-F]{40}$/.test(payer)) {
    throw new UserError(`"${payer}" is not an address: enter 0x and 40 hex digits.`);
  }
  channels.params = { payer };
  await channels.load();
  return balanceSummary(payer, [...channels.items.values()]);
}

function balanceSummary(payer, items) {
  const total = items.reduce((sum, c) => sum + BigInt(c.balance ?? 0), 0n);
  return `${shortHex(payer)}: ${items.length} channel(s), ${amount(total)} in escrow in all.`;
}

function useRoot(root) {
  $("verify-root").value = root;
  $("verify-receipt").focus();
}

function showTokenSymbol() {
  for (const node of document.querySelectorAll(".token-symbol")) node.textContent = chain.token.symbol;
  renderAll();
}

function wireForms() {
  $("connect").addEventListener("click", connectWallet);
  $("job-state-filter").addEventListener("change", (event) => {
    jobs.params = { state: event.target.value };
    jobs.load().catch((error) => showPageError(describeError(error)));
  });
  $("balance-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runForm(event.target, $("balance-result"), () => showBalances($("balance-address").value));
  });
  $("job-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runForm(event.target, $("job-result"), async (progress) => {
      const job = await chain.createJob(
        {
          modelId: $("job-model").value, inputCid: $("job-input").value, maxPayment: $("job-max").value, hours: $("job-hours").value,
          priorityProvider: $("job-priority").value, priorityMinutes: $("job-priority-minutes").value,
        },
        progress,
      );
      const priority = job.priorityProvider
        ? ` Only ${job.priorityProvider} may claim it until ${formatTimestamp(job.priorityUntil)}.`
        : "";
      return `Job #${job.jobId} created in block ${job.block} (transaction ${job.txHash}); it shows in the list as soon as it is indexed.${priority}`;
    });
  });
  $("deposit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runForm(event.target, $("deposit-result"), async (progress) => {
      const done = await chain.deposit({ provider: $("deposit-provider").value, amount: $("deposit-amount").value }, progress);
      const cancelled = done.cancelledWithdrawal ? " The withdrawal that was pending for this channel is cancelled." : "";
      return `Deposited ${amount(done.amount)} in block ${done.block} (transaction ${done.txHash}); the channel now holds ${amount(done.balance)}.${cancelled}`;
    });
  });
  $("withdraw-provider").addEventListener("change", refreshWithdrawStatus);
  $("withdraw-request").addEventListener("click", () => {
    runForm($("withdraw-form"), $("withdraw-result"), async (progress) => {
      const done = await chain.requestWithdrawal({ provider: $("withdraw-provider").value }, progress);
      refreshWithdrawStatus();
      return `Withdrawal requested in block ${done.block} (transaction ${done.txHash}): withdraw ${amount(done.balance)} from ${formatTimestamp(done.unlockAt)} on.`;
    });
  });
  $("withdraw-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runForm(event.target, $("withdraw-result"), async (progress) => {
      const done = await chain.withdraw({ provider: $("withdraw-provider").value }, progress);
      refreshWithdrawStatus();
      return `Withdrew ${amount(done.amount)} to your wallet in block ${done.block} (transaction ${done.txHash}).`;
    });
  });
  $("verify-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = $("verify-result");
    const submit = $("verify-submit");
    submit.disabled = true;
    setResult(result, "Checking on chain…");
    try {
      const check = await chain.verifyReceipt($("verify-receipt").value, $("verify-root").value, $("verify-proof").value);
      const signature = check.signature === null ? "" : ` Provider signature: ${check.signature}.`;
      if (check.valid) {
        result.dataset.verdict = "valid";
        setResult(result, `Valid: the receipt is included in batch ${check.root} committed on chain by ${check.receipt.provider} (leaf ${check.leaf}).${signature}`, "ok");
      } else if (!check.committed) {
        result.dataset.verdict = "invalid";
        setResult(result, `Invalid: ${check.receipt.provider} never committed the root ${check.root} on chain.${signature}`, "bad");
      } else {
        result.dataset.verdict = "invalid";
        setResult(result, `Invalid: the receipt and proof do not lead to the committed root ${check.root}: the receipt was altered or the proof belongs to another receipt.${signature}`, "bad");
      }
    } catch (error) {
      result.dataset.verdict = "error";
      setResult(result, describeError(error), "bad");
    } finally {
      submit.disabled = false;
    }
  });
}

// -- start ------------------------------------------------------------------------------------------
async function main() {
  wireForms();
  const [deployment, position] = await Promise.all([getJson(new URL("deployments.json", HERE)), getJson(new URL("api/position", HERE))]);
  chain = new Chain(deployment, position.rpc_relay ? new URL("rpc", HERE).href : null);
  showPosition(position);
  try {
    await chain.loadToken();
  } catch (error) {
    showPageError(`Token details unavailable, amounts are in base units: ${describeError(error)}`);
  }
  showTokenSymbol();
  await Promise.all([models.load(), providers.load(), jobs.load(), receipts.load()]);
  // NOTE: the stream resumes after the change id read before the lists, so no change is missed;
  // a change already in a list is applied again, which upserts the same document.
  startStream(position.change_id);
  watchWallet();
  setTimeout(pollPosition, POSITION_EVERY_MS);
  if (position.liveness) refreshLiveness();
  document.body.dataset.ready = "true";
}

main().catch((error) => showPageError(`The explorer could not start: ${describeError(error)}`));
