"""Train the tiny Llama that the lm-eval bridge tests, RULER parity test and speed benchmark use.

A checkpoint that scores 0 everywhere proves nothing about agreement between two harnesses, so
this trains a ~1.3M-parameter Llama (transformers' ``LlamaForCausalLM``) to do needle retrieval
on RULER-style prompts: RULER's NIAH template, needle sentence and answer prefix; haystacks of
RULER's noise sentences, distractor needles, random words or sentences of English words; keys as
adjective-noun pairs (RULER's words), evalkit key words, numbers or UUIDs; values as 7-digit
numbers, shorter numbers, words or UUIDs; 1 or 4 keys / values / queries. The target after the
answer prefix is `` v1, v2.`` + EOS (values in the order RULER lists them).

The data generator here is written for training only (its own RNG and sampling); the evaluated
samples come from lm-eval's RULER code and from evalkit's presets, never from this file.

Two steps::

    # 1. on the CPU machine: train the tokenizer, write the word lists (needs wonderwords)
    python benchmarks/train_tiny_niah.py prepare --out benchmarks/checkpoints/tiny-llama-niah
    # 2. on a GPU (about 6 minutes on one H100): train and save the model beside the tokenizer
    python benchmarks/train_tiny_niah.py train --out benchmarks/checkpoints/tiny-llama-niah
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
import uuid
from pathlib import Path

NEEDLE = "One of the special magic {tv} for {key} is: {value}."
TEMPLATE = ("Some special magic {tv} are hidden within the following text. Make sure to memorize it. I will quiz you "
            "about the {tv} afterwards.\n{context}\nWhat are all the special magic {tv} for {query} mentioned in the "
            "provided text?")
PREFIX = " The special magic {tv} for {query} mentioned in the provided text are"
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
WORDS_FILE = "train_words.json"  # word lists for training only; deleted from the shipped checkpoint


def _repo_words(name: str) -> list[str]:
    p = Path(__file__).resolve().parents[1] / "evalkit" / "tasks" / "data" / name
    if not p.exists():
        return []
    return [w.strip() for w in p.read_text().splitlines() if w.strip() and not w.startswith("#")]


# ------------------------------------------------------------------------------------ prepare
def prepare(out: Path) -> None:
    import wonderwords
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    r = wonderwords.RandomWord()
    words = {"adjs": sorted(r._categories["adjectives"]), "nouns": sorted(r._categories["nouns"]),
             "keys": _repo_words("keys.txt"), "values": _repo_words("values.txt"),
             "haystack": _repo_words("haystack_words.txt")}
    (out / WORDS_FILE).write_text(json.dumps(words))
    rng = random.Random(0)
    corpus = [NOISE, TEMPLATE, PREFIX]
    corpus += words["adjs"] + words["nouns"] + words["keys"] + words["values"] + words["haystack"]
    for _ in range(20000):
        corpus.append(_sentence(rng, words) + " " + str(uuid.UUID(int=rng.getrandbits(128), version=4)))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(out)
    print(f"tokenizer ({tok.get_vocab_size()} tokens) and word lists written to {out}")


def _sentence(rng: random.Random, words: dict) -> str:
    n = rng.randint(6, 18)
    w = [rng.choice(words["haystack"] or words["nouns"]) for _ in range(n)]
    return " ".join(w).capitalize() + "."


# ------------------------------------------------------------------------------------ data
class Gen:
    """Random RULER-style training prompts (text) with their answer text."""

    def __init__(self, words: dict, seed: int) -> None:
        self.w = words
        self.rng = random.Random(seed)

    def item(self, kind: str) -> str:
        r = self.rng
        if kind == "words":
            if r.random() < 0.7:
                return f"{r.choice(self.w['adjs'])}-{r.choice(self.w['nouns'])}"
            return "-".join(r.choice(self.w["keys"]) for _ in range(r.randint(1, 3)))
        if kind == "numbers":
            return str(r.randint(10**6, 10**7 - 1)) if r.random() < 0.8 else str(r.randint(0, 10 ** r.randint(1, 9)))
        if kind == "values":
            return r.choice(self.w["values"] or self.w["nouns"])
        return str(uuid.UUID(int=r.getrandbits(128), version=4))

    def sample(self, units: int) -> tuple[str, str]:
        r = self.rng
        hay = r.choice(["noise", "noise", "noise", "needle", "needle", "words", "sentences"])
        tk = r.choice(["words"] * 4 + ["uuids", "numbers"])
        tv = r.choice(["numbers"] * 4 + ["uuids", "values"])
        nk, nv, nq = r.choice([(1, 1, 1)] * 6 + [(4, 1, 1), (1, 4, 1), (4, 1, 4)])
        tvn = "words" if tv == "values" else tv
        keys, values, needles = [], [], []
        for _ in range(nk):
            keys.append(self.item(tk))
            vals = [self.item(tv) for _ in range(nv)]
            values.append(vals)
            needles += [NEEDLE.format(tv=tvn, key=keys[-1], value=v) for v in vals]
        r.shuffle(needles)
        if hay == "noise":
            sents = [NOISE] * units
        elif hay == "needle":
            sents = [NEEDLE.format(tv=tvn, key=self.item(tk), value=self.item(tv)) for _ in range(units)]
        elif hay == "words":
            sents = [" ".join(r.choice(self.w["haystack"] or self.w["nouns"]) for _ in range(20)) for _ in range(units)]
        else:
            sents = [_sentence(r, self.w) for _ in range(units)]
        for i, n in zip(sorted((r.randint(0, units) for _ in needles), reverse=True), needles):
            sents.insert(i, n)
        context = "\n".join(sents) if hay != "sentences" else " ".join(sents)
        q = r.sample(range(nk), nq)
        queries = [keys[i] for i in q]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if nq > 1 else queries[0]
        # values of one key in context order, keys in query order (what the model is asked)
        answers = [v for i in q for v in sorted(values[i], key=context.index)]
        template, prefix, tvs = TEMPLATE, PREFIX, tvn
        if nq * nv == 1:
            template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
            prefix, tvs = prefix.replace("are", "is"), tvn[:-1]
        prompt = template.format(tv=tvs, context=context, query=query) + prefix.format(tv=tvs, query=query)
        return prompt, " " + ", ".join(answers) + "."


# ------------------------------------------------------------------------------------ train
def train(out: Path, steps: int, minutes: float, device: str = "cuda") -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    words = json.loads((out / WORDS_FILE).read_text())
    tok = AutoTokenizer.from_pretrained(out)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                      rope_theta=10000.0, bos_token_id=tok.bos_token_id, eos_token_id=eos,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).to(device)
    model.config._attn_implementation = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.01)
    gen = Gen(words, seed=1)
    lengths = [256, 512, 1024, 2048, 4096]
    units_per_token = {}  # rough haystack units per token, learned on the fly per length

    def batch(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(1, 65536 // length)
        texts, answers = [], []
        for _ in range(n):
            u = units_per_token.get(length, length // 25)
            p, a = gen.sample(max(4, int(u * random.uniform(0.5, 1.0))))
            texts.append(p)
            answers.append(a)
        enc_p = tok(texts, add_special_tokens=False)["input_ids"]
        enc_a = tok(answers, add_special_tokens=False)["input_ids"]
        ids = torch.full((n, length), tok.pad_token_id, dtype=torch.long)
        tgt = torch.full((n, length), -100, dtype=torch.long)
        used = []
        for b, (p, a) in enumerate(zip(enc_p, enc_a)):
            seq = p + a + [eos]
            used.append(len(seq))
            seq = seq[-length:]
            ids[b, :len(seq)] = torch.tensor(seq)
            start = len(seq) - len(a) - 1  # first answer token; logits at p predict token p + 1
            tgt[b, start - 1:len(seq) - 1] = torch.tensor(seq[start:])
        u = units_per_token.get(length, length // 25)
        units_per_token[length] = max(4, int(u * length / max(max(used), 1)))
        return ids.to(device), tgt.to(device)

    def copy_batch(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random tokens repeated twice, loss on the repeat: the classic induction-head warm-up."""
        n, half = max(1, 65536 // length), length // 2
        first = torch.randint(3, len(tok), (n, half))
        ids = torch.cat([first, first], 1)
        tgt = torch.full((n, length), -100, dtype=torch.long)
        tgt[:, half - 1:-1] = ids[:, half:]
        return ids.to(device), tgt.to(device)

    t0 = time.time()
    step = 0
    while step < steps and time.time() - t0 < minutes * 60:
        progress = max(step / steps, (time.time() - t0) / (minutes * 60))
        lr = 2e-3 * min(1.0, step / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        top = 1 + min(len(lengths) - 1, int(progress * 1.5 * len(lengths)))
        length = random.choice(lengths[:top])
        copy = random.random() < max(0.1, 0.5 - progress)
        ids, tgt = copy_batch(length) if copy else batch(length)
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(ids).logits.float()
        lp = torch.log_softmax(logits, -1)  # (B, L, V)
        mask_ans = tgt != -100
        ans_loss = -(lp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * mask_ans).sum() / mask_ans.sum()
        # the rest of the sequence weighted a little: next-token loss helps induction heads form
        nxt = ids[:, 1:]
        pad = nxt != tok.pad_token_id
        lm_loss = -(lp[:, :-1].gather(-1, nxt[..., None])[..., 0] * pad).sum() / pad.sum()
        loss = ans_loss + (0.0 if copy else 0.3 * lm_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            print(f"step {step} {'copy' if copy else 'task'} L={length} lr={lr:.2e} ans_loss={ans_loss.item():.4f} lm={lm_loss.item():.3f} "
                  f"t={time.time() - t0:.0f}s", flush=True)
        step += 1
    model.eval()
    for length in lengths:
        ids, tgt = batch(length)
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            pred = model(ids).logits.argmax(-1)
        ok = ((pred == tgt) | (tgt == -100)).all(-1).float().mean().item()
        print(f"held-out teacher-forced exact match at L={length}: {ok:.3f}", flush=True)
    model.to(torch.float32).save_pretrained(out)
    (out / "train_info.json").write_text(json.dumps({"steps": step, "seconds": round(time.time() - t0),
                                                     "device": torch.cuda.get_device_name() if device == "cuda" else device}))
    print(f"saved to {out} after {step} steps", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["prepare", "train"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/checkpoints/tiny-llama-niah"))
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--minutes", type=float, default=7.0)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    prepare(args.out) if args.step == "prepare" else train(args.out, args.steps, args.minutes, args.device)


if __name__ == "__main__":
    main()
