// On-chain side of the explorer: contracts from the deployments file, the wallet (EIP-1193),
// transactions (approve + createJob, approve + deposit, requestWithdrawal then withdraw) and
// receipt inclusion checks, with ethers v6.
//
// Reads go through the indexer's read-only relay (/explorer/rpc) when it has one, so a visitor
// without a wallet can still check receipts; transactions always go through the wallet.

import {
  AbiCoder, BrowserProvider, Contract, JsonRpcProvider, ZeroAddress, formatUnits, getAddress, isAddress,
  isHexString, keccak256, parseUnits, verifyTypedData,
} from "./vendor/ethers-6.17.0.min.js";

export const MAX_CID_LENGTH = 100;
export const MIN_CID_LENGTH = 10;
export const MAX_JOB_HOURS = 30 * 24;
// NOTE: the contract only needs the window to end after the block that creates the job; a minute
// leaves room for the time the wallet takes to confirm.
export const MIN_PRIORITY_MINUTES = 1;
const ADDRESS_SHAPE = /^0x[0-9a-fA-F]{40}$/;

/** An error whose message is meant for the user as it is. */
export class UserError extends Error {}

/** "1 day", "2 h 5 min", "40 s": a duration as a person reads it. */
export function formatDuration(totalSeconds) {
  let seconds = Math.max(0, Math.round(Number(totalSeconds)));
  const days = Math.floor(seconds / 86400);
  seconds -= days * 86400;
  const hours = Math.floor(seconds / 3600);
  seconds -= hours * 3600;
  const minutes = Math.floor(seconds / 60);
  seconds -= minutes * 60;
  const parts = [];
  if (days) parts.push(`${days} day${days === 1 ? "" : "s"}`);
  if (hours) parts.push(`${hours} h`);
  if (minutes && !days) parts.push(`${minutes} min`);
  if (seconds && !days && !hours) parts.push(`${seconds} s`);
  return parts.length ? parts.join(" ") : "0 s";
}

/** A chain timestamp as this computer writes dates. */
export function formatTimestamp(unix) {
  return new Date(Number(unix) * 1000).toLocaleString();
}

/**
 * The priority provider and window of the job form, checked against the deadline: {provider,
 * minutes} with provider null when the job has none. UserError saying what is wrong.
 */
export function parsePriority(providerText, minutesText, deadlineHours) {
  const given = String(providerText ?? "").trim();
  const window = String(minutesText ?? "").trim();
  if (!given) {
    if (window) throw new UserError("A priority window needs a priority provider: give one, or leave the window empty.");
    return { provider: null, minutes: 0 };
  }
  if (!ADDRESS_SHAPE.test(given)) {
    throw new UserError(`The priority provider "${given}" is not an address: give 0x and 40 hex digits, or pick a provider from the list.`);
  }
  if (!isAddress(given)) {
    throw new UserError(`The priority provider "${given}" has a wrong checksum (a typo?): copy the address again, or write it in lower case.`);
  }
  const provider = getAddress(given);
  if (provider === ZeroAddress) throw new UserError("The zero address cannot be a priority provider: leave the field empty for none.");
  const limit = Number(deadlineHours) * 60;
  if (!window) {
    throw new UserError(`Give the priority window: for how many minutes only ${provider} may claim the job (${MIN_PRIORITY_MINUTES} to ${limit} minutes: it must end by the deadline).`);
  }
  if (!/^\d+$/.test(window)) {
    throw new UserError(`The priority window must be a whole number of minutes, e.g. 30 (got "${window}").`);
  }
  const minutes = Number(window);
  if (minutes < MIN_PRIORITY_MINUTES) throw new UserError(`The priority window must be at least ${MIN_PRIORITY_MINUTES} minute.`);
  if (minutes > limit) {
    throw new UserError(`The priority window (${minutes} minutes) ends after the job's deadline (${deadlineHours} hours, ${limit} minutes from now): make it at most ${limit} minutes, or move the deadline.`);
  }
  return { provider, minutes };
}

/** The message of an ethers/wallet error, as a person would want to read it. */
export function describeError(error) {
  if (error instanceof UserError) return error.message;
  if (error?.code === "ACTION_REJECTED" || error?.info?.error?.code === 4001 || error?.code === 4001) {
    return "The wallet rejected the request.";
  }
  const reason = error?.reason || error?.revert?.args?.[0];
  if (reason) return `The contract refused: ${reason}`;
  return error?.shortMessage || error?.info?.error?.message || error?.message || String(error);
}

export class Chain {
  /**
   * @param {object} deployment the deployments file (chain_id, contracts: name -> {address, abi})
   * @param {string | null} relayUrl absolute URL of the read-only JSON-RPC relay, or null
   */
  constructor(deployment, relayUrl) {
    this.deployment = deployment;
    this.chainId = BigInt(deployment.chain_id);
    this.tokenName = deployment.contracts.TestToken ? "TestToken" : "Token";
    this.readProvider = relayUrl
      ? new JsonRpcProvider(relayUrl, Number(this.chainId), { staticNetwork: true, batchMaxCount: 1 })
      : null;
    this.wallet = null; // {provider, signer, address}
    this.token = { symbol: "tokens", decimals: null };
  }

  address(name) {
    const entry = this.deployment.contracts[name];
    if (!entry) throw new UserError(`The deployments file has no ${name} contract.`);
    return entry.address;
  }

  contract(name, runner) {
    const entry = this.deployment.contracts[name];
    if (!entry) throw new UserError(`The deployments file has no ${name} contract.`);
    return new Contract(entry.address, entry.abi, runner);
  }

  reader() {
    const runner = this.readProvider || this.wallet?.provider;
    if (!runner) throw new UserError("Reading the chain needs a wallet here: connect one (this indexer relays no RPC).");
    return runner;
  }

  async loadToken() {
    try {
      const token = this.contract(this.tokenName, this.reader());
      const [symbol, decimals] = await Promise.all([token.symbol(), token.decimals()]);
      this.token = { symbol, decimals: Number(decimals) };
    } catch (error) {
      // NOTE: without token metadata amounts are shown in base units, which stays correct.
      this.token = { symbol: "base units", decimals: null };
      if (!(error instanceof UserError)) throw error;
    }
    return this.token;
  }

  formatAmount(value) {
    if (value === null || value === undefined) return "–";
    const amount = BigInt(value);
    if (this.token.decimals === null) return `${amount} ${this.token.symbol}`;
    const [whole, fraction = ""] = formatUnits(amount, this.token.decimals).split(".");
    const shown = fraction.replace(/0+$/, "").padEnd(2, "0");
    return `${BigInt(whole).toLocaleString("en-US")}.${shown} ${this.token.symbol}`;
  }

  /** Base units of a decimal amount the user typed; UserError when it is not a positive amount. */
  parseAmount(text, what) {
    const value = String(text ?? "").trim().replace(/_/g, "");
    const decimals = this.token.decimals ?? 0;
    if (!/^\d+(\.\d+)?$/.test(value)) {
      throw new UserError(`${what} must be a positive number, e.g. 5 or 2.5 (got "${text}").`);
    }
    let amount;
    try {
      amount = parseUnits(value, decimals);
    } catch {
      throw new UserError(`${what} has more than ${decimals} decimals.`);
    }
    if (amount <= 0n) throw new UserError(`${what} must be more than zero.`);
    return amount;
  }

  // -- wallet --------------------------------------------------------------------------------------
  async connect(ethereum) {
    if (!ethereum || typeof ethereum.request !== "function") {
      throw new UserError("No wallet found: install MetaMask or another EIP-1193 wallet, then reload.");
    }
    const accounts = await ethereum.request({ method: "eth_requestAccounts" });
    if (!accounts?.length) throw new UserError("The wallet shared no account.");
    const walletChain = BigInt(await ethereum.request({ method: "eth_chainId" }));
    if (walletChain !== this.chainId) {
      try {
        await ethereum.request({ method: "wallet_switchEthereumChain", params: [{ chainId: "0x" + this.chainId.toString(16) }] });
      } catch {
        throw new UserError(`The wallet is on chain ${walletChain}, the marketplace on chain ${this.chainId}: switch networks in the wallet.`);
      }
    }
    // NOTE: 1 s polling instead of ethers' 4 s default: a local chain mines at once.
    const provider = new BrowserProvider(ethereum, Number(this.chainId), { pollingInterval: 1000 });
    const signer = await provider.getSigner(accounts[0]);
    this.wallet = { provider, signer, address: getAddress(accounts[0]) };
    return this.wallet.address;
  }

  disconnect() {
    this.wallet = null;
  }

  requireWallet() {
    if (!this.wallet) throw new UserError("Connect a wallet first.");
    return this.wallet;
  }

  /** Approves `spender` for `amount` when the allowance is short; resolves once mined. */
  async ensureAllowance(spenderName, amount, progress) {
    const { signer, address } = this.requireWallet();
    const token = this.contract(this.tokenName, signer);
    const spender = this.address(spenderName);
    const balance = await token.balanceOf(address);
    if (balance < amount) {
      throw new UserError(`Your balance is ${this.formatAmount(balance)}, less than ${this.formatAmount(amount)}.`);
    }
    const allowance = await token.allowance(address, spender);
    if (allowance >= amount) return null;
    progress(`Step 1 of 2: approve ${this.formatAmount(amount)} for the ${spenderName} in your wallet…`);
    const tx = await token.approve(spender, amount);
    progress(`Step 1 of 2: waiting for the approval (${tx.hash})…`);
    const receipt = await tx.wait();
    if (receipt.status !== 1) throw new UserError(`The approval failed in transaction ${tx.hash}.`);
    return receipt;
  }

  async createJob({ modelId, inputCid, maxPayment, hours, priorityProvider, priorityMinutes }, progress) {
    const cid = String(inputCid ?? "").trim();
    if (cid.length < MIN_CID_LENGTH || cid.length > MAX_CID_LENGTH) {
      throw new UserError(`The input CID must be ${MIN_CID_LENGTH} to ${MAX_CID_LENGTH} characters (got ${cid.length}).`);
    }
    if (!/^[A-Za-z0-9]+$/.test(cid)) throw new UserError("The input CID may only hold letters and digits.");
    const wantedHours = Number(hours);
    if (!Number.isInteger(wantedHours) || wantedHours < 1 || wantedHours > MAX_JOB_HOURS) {
      throw new UserError(`The deadline must be 1 to ${MAX_JOB_HOURS} whole hours from now.`);
    }
    if (modelId === "" || modelId === null || modelId === undefined) throw new UserError("Choose a model.");
    const priority = parsePriority(priorityProvider, priorityMinutes, wantedHours);
    const { signer, provider } = this.requireWallet();
    const amount = this.parseAmount(maxPayment, "The maximum payment");
    if (priority.provider && this.deployment.contracts.ProviderRegistry) {
      // NOTE: the market takes any address, but only a registered provider can claim: a window
      // for anyone else would keep the job unclaimed until the window ends.
      const registry = this.contract("ProviderRegistry", this.reader());
      if (!(await registry.isRegistered(priority.provider))) {
        throw new UserError(`${priority.provider} is not a registered provider: nobody could claim the job during its priority window.`);
      }
    }
    const approval = await this.ensureAllowance("JobMarket", amount, progress);
    const step = approval ? "Step 2 of 2" : "Step 1 of 1";
    // NOTE: the deadline and the window count from the chain's clock, which can differ from this computer's.
    const latest = await provider.getBlock("latest");
    const deadline = BigInt(latest.timestamp) + BigInt(wantedHours * 3600);
    const priorityUntil = priority.provider ? BigInt(latest.timestamp) + BigInt(priority.minutes * 60) : 0n;
    const market = this.contract("JobMarket", signer);
    progress(`${step}: confirm createJob in your wallet…`);
    const tx = await market.createJob(BigInt(modelId), cid, amount, deadline, priority.provider ?? ZeroAddress, priorityUntil);
    progress(`${step}: waiting for createJob (${tx.hash})…`);
    const receipt = await tx.wait();
    const created = this.findEvent(market, receipt, "JobCreated");
    if (!created) throw new UserError(`createJob emitted no JobCreated event (transaction ${tx.hash}).`);
    return {
      jobId: created.args.jobId, txHash: tx.hash, block: receipt.blockNumber,
      priorityProvider: priority.provider, priorityUntil: created.args.priorityUntil,
    };
  }

  async deposit({ provider: providerAddress, amount: amountText }, progress) {
    if (!isAddress(String(providerAddress ?? ""))) throw new UserError("Choose a provider.");
    const { signer, address } = this.requireWallet();
    const amount = this.parseAmount(amountText, "The amount");
    const approval = await this.ensureAllowance("InferenceEscrow", amount, progress);
    const step = approval ? "Step 2 of 2" : "Step 1 of 1";
    const escrow = this.contract("InferenceEscrow", signer);
    const before = await this.contract("InferenceEscrow", this.reader()).channels(address, getAddress(providerAddress));
    progress(`${step}: confirm the deposit in your wallet…`);
    const tx = await escrow.deposit(getAddress(providerAddress), amount);
    progress(`${step}: waiting for the deposit (${tx.hash})…`);
    const receipt = await tx.wait();
    const deposited = this.findEvent(escrow, receipt, "Deposited");
    if (!deposited) throw new UserError(`deposit emitted no Deposited event (transaction ${tx.hash}).`);
    return {
      amount, balance: deposited.args.balance, txHash: tx.hash, block: receipt.blockNumber,
      cancelledWithdrawal: BigInt(before.unlockAt) !== 0n,
    };
  }

  // -- escrow withdrawal: requestWithdrawal, the timelock, then withdraw -----------------------------
  async withdrawTimelock() {
    return Number(await this.contract("InferenceEscrow", this.reader()).withdrawTimelock());
  }

  /**
   * The connected wallet's channel with `provider`, judged at the chain's latest block:
   * {balance, unlockAt, now, state} with state "empty" | "none" | "pending" | "ready".
   */
  async channel(providerAddress) {
    const { address } = this.requireWallet();
    if (!isAddress(String(providerAddress ?? ""))) throw new UserError("Choose a provider channel.");
    const reader = this.reader();
    const escrow = this.contract("InferenceEscrow", reader);
    const [channel, latest] = await Promise.all([escrow.channels(address, getAddress(providerAddress)), reader.getBlock("latest")]);
    const balance = BigInt(channel.balance);
    const unlockAt = BigInt(channel.unlockAt);
    const now = BigInt(latest.timestamp);
    let state = "none";
    if (balance === 0n) state = "empty";
    else if (unlockAt !== 0n) state = now >= unlockAt ? "ready" : "pending";
    return { provider: getAddress(providerAddress), balance, unlockAt, now, state };
  }

  async requestWithdrawal({ provider: providerAddress }, progress) {
    const channel = await this.channel(providerAddress);
    if (channel.state === "empty") throw new UserError(`You have nothing deposited for ${channel.provider}.`);
    if (channel.state === "pending") {
      throw new UserError(`A withdrawal is already pending: it can be completed at ${formatTimestamp(channel.unlockAt)} (in ${formatDuration(Number(channel.unlockAt - channel.now))}, chain time). Requesting again would restart the wait.`);
    }
    if (channel.state === "ready") throw new UserError("Your withdrawal is already unlocked: press Withdraw.");
    const escrow = this.contract("InferenceEscrow", this.requireWallet().signer);
    progress("Step 1 of 2: confirm requestWithdrawal in your wallet…");
    const tx = await escrow.requestWithdrawal(channel.provider);
    progress(`Step 1 of 2: waiting for requestWithdrawal (${tx.hash})…`);
    const receipt = await tx.wait();
    const requested = this.findEvent(escrow, receipt, "WithdrawalRequested");
    if (!requested) throw new UserError(`requestWithdrawal emitted no WithdrawalRequested event (transaction ${tx.hash}).`);
    return { unlockAt: requested.args.unlockAt, balance: channel.balance, txHash: tx.hash, block: receipt.blockNumber };
  }

  async withdraw({ provider: providerAddress }, progress) {
    const channel = await this.channel(providerAddress);
    if (channel.state === "empty") throw new UserError(`You have nothing deposited for ${channel.provider}.`);
    if (channel.state === "none") {
      const timelock = formatDuration(await this.withdrawTimelock());
      throw new UserError(`Request the withdrawal first: the escrow releases a deposit ${timelock} after the request.`);
    }
    if (channel.state === "pending") {
      throw new UserError(`Not yet: the withdrawal can be completed at ${formatTimestamp(channel.unlockAt)} (in ${formatDuration(Number(channel.unlockAt - channel.now))}, chain time).`);
    }
    const escrow = this.contract("InferenceEscrow", this.requireWallet().signer);
    progress("Step 2 of 2: confirm withdraw in your wallet…");
    const tx = await escrow.withdraw(channel.provider);
    progress(`Step 2 of 2: waiting for withdraw (${tx.hash})…`);
    const receipt = await tx.wait();
    const withdrawn = this.findEvent(escrow, receipt, "Withdrawn");
    if (!withdrawn) throw new UserError(`withdraw emitted no Withdrawn event (transaction ${tx.hash}).`);
    return { amount: withdrawn.args.amount, txHash: tx.hash, block: receipt.blockNumber };
  }

  findEvent(contract, receipt, name) {
    const target = String(contract.target).toLowerCase();
    for (const log of receipt.logs) {
      if (String(log.address).toLowerCase() !== target) continue;
      const parsed = contract.interface.parseLog(log);
      if (parsed?.name === name) return parsed;
    }
    return null;
  }

  // -- receipts ------------------------------------------------------------------------------------
  /**
   * Checks a receipt against the on-chain root: isCommitted(provider, root), then verifyReceipt.
   * Returns {valid, committed, signature, leaf, receipt} with signature null | "valid" | "invalid".
   */
  async verifyReceipt(receiptText, rootText, proofText) {
    const parsed = parseReceiptInput(receiptText, rootText, proofText);
    const registry = this.contract("ReceiptRegistry", this.reader());
    const tuple = RECEIPT_FIELDS.map(([name]) => parsed.receipt[name]);
    const committed = await registry.isCommitted(parsed.receipt.provider, parsed.root);
    const valid = committed ? await registry.verifyReceipt(parsed.root, tuple, parsed.proof) : false;
    let signature = null;
    if (parsed.signature) signature = this.checkSignature(parsed) ? "valid" : "invalid";
    return { valid, committed, signature, leaf: receiptLeaf(tuple), ...parsed };
  }

  checkSignature(parsed) {
    const registry = parsed.registry ?? this.address("ReceiptRegistry");
    const domain = { name: "NodeAI Receipts", version: "1", chainId: parsed.chainId ?? this.chainId, verifyingContract: registry };
    const types = { Receipt: RECEIPT_FIELDS.map(([name, type]) => ({ name, type })) };
    try {
      return getAddress(verifyTypedData(domain, types, parsed.receipt, parsed.signature)) === parsed.receipt.provider;
    } catch {
      return false;
    }
  }
}

// -- receipt parsing (pure) ------------------------------------------------------------------------
export const RECEIPT_FIELDS = [
  ["requestHash", "bytes32", "request_hash"],
  ["provider", "address", "provider"],
  ["payer", "address", "payer"],
  ["modelId", "uint256", "model_id"],
  ["tokensIn", "uint256", "tokens_in"],
  ["tokensOut", "uint256", "tokens_out"],
  ["latencyMs", "uint256", "latency_ms"],
  ["amount", "uint256", "amount"],
  ["timestamp", "uint256", "timestamp"],
];

function bytes32(value, what) {
  const text = String(value ?? "").trim();
  const hex = text.startsWith("0x") || text.startsWith("0X") ? text : "0x" + text;
  if (!isHexString(hex, 32)) throw new UserError(`${what} must be 32 bytes of hex (0x and 64 hex digits), got "${text}".`);
  return hex.toLowerCase();
}

function uint(value, what) {
  const text = typeof value === "bigint" ? value.toString() : String(value ?? "").trim();
  if (!/^\d+$/.test(text)) throw new UserError(`${what} must be a non-negative integer, got "${text}".`);
  return BigInt(text);
}

/** The receipt, root, proof and signature of the form's text; UserError saying what is wrong. */
export function parseReceiptInput(receiptText, rootText, proofText) {
  let body;
  try {
    body = JSON.parse(String(receiptText ?? "").trim(), bigIntReviver);
  } catch (error) {
    throw new UserError(`The receipt is not valid JSON: ${error.message}`);
  }
  if (!body || typeof body !== "object" || Array.isArray(body)) throw new UserError("The receipt must be a JSON object.");
  const source = body.receipt && typeof body.receipt === "object" ? body.receipt : body;
  const receipt = {};
  for (const [name, type, snake] of RECEIPT_FIELDS) {
    const value = source[name] ?? source[snake];
    if (value === undefined || value === null) throw new UserError(`The receipt has no ${name} field.`);
    if (type === "address") {
      if (!isAddress(String(value))) throw new UserError(`receipt.${name} is not an address: "${value}".`);
      receipt[name] = getAddress(String(value));
    } else if (type === "bytes32") {
      receipt[name] = bytes32(value, `receipt.${name}`);
    } else {
      receipt[name] = uint(value, `receipt.${name}`);
    }
  }
  const rootGiven = String(rootText ?? "").trim() || body.root || source.root;
  if (!rootGiven) throw new UserError("Give the batch's Merkle root (or a root field in the JSON).");
  const root = bytes32(rootGiven, "The root");
  let proof = body.proof ?? source.proof;
  const proofInput = String(proofText ?? "").trim();
  if (proofInput) {
    if (proofInput.startsWith("[")) {
      try {
        proof = JSON.parse(proofInput);
      } catch (error) {
        throw new UserError(`The proof is not a valid JSON array: ${error.message}`);
      }
    } else {
      proof = proofInput.split(/[\s,]+/).filter(Boolean);
    }
  }
  if (proof === undefined || proof === null) proof = [];
  if (!Array.isArray(proof)) throw new UserError("The proof must be a list of 32-byte hashes.");
  if (proof.length > 32) throw new UserError("The proof has more than 32 hashes (the registry accepts at most 32).");
  proof = proof.map((item, i) => bytes32(item, `Proof item ${i + 1}`));
  const signature = source.signature ?? body.signature ?? null;
  if (signature !== null && !isHexString(String(signature), 65)) {
    throw new UserError("The receipt's signature must be 65 bytes of hex.");
  }
  const chainId = source.chainId ?? body.chainId;
  const registry = source.registry ?? body.registry;
  return {
    receipt,
    root,
    proof,
    signature,
    chainId: chainId === undefined ? null : uint(chainId, "chainId"),
    registry: registry && isAddress(String(registry)) ? getAddress(String(registry)) : null,
  };
}

/** keccak256(keccak256(abi.encode(receipt))): the leaf ReceiptRegistry hashes (shown to the user). */
export function receiptLeaf(tuple) {
  const coder = AbiCoder.defaultAbiCoder();
  const encoded = coder.encode(RECEIPT_FIELDS.map(([, type]) => type), tuple);
  return keccakTwice(encoded);
}

function keccakTwice(data) {
  return keccak256(keccak256(data));
}

/**
 * JSON.parse reviver that keeps integers above 2**53 exact (as BigInt): chain amounts are
 * uint256. Uses the reviver's source text where the browser gives it (Chromium 114+, Firefox 135+).
 */
export function bigIntReviver(key, value, context) {
  if (typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value) && context?.source) {
    return BigInt(context.source);
  }
  return value;
}
