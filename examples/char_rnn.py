"""A character-level language model: a GRU learns to write like the King James Genesis.

    python examples/char_rnn.py [--epochs 20] [--steps 100] [--length 300]

The bundled text (Genesis 1-11, King James Version, public domain; 35 kB) is cut into
windows of 64 characters. At each position of a window the network reads one
character (Embedding), updates its state (GRU) and gives the probabilities of the
next character (a softmax Dense on every step); the loss is the cross-entropy of
the true next characters, averaged over all steps. After each epoch it prints the
loss and a sample written one character at a time by drawing from those
probabilities, then the sample of the trained model and its per-character
perplexity on the held-out last tenth of the text.

Characters are numbered from 1: index 0 is padding, which the Embedding masks
(mask_zero=True) so that the GRU skips it. A context shorter than the window is
padded on the left and gives the same state as the unpadded characters alone.
"""

import argparse
import os
import time

import numpy as np

import fusenn
from fusenn import GRU, Dense, Embedding

WINDOW = 64  # characters per training sequence


def sample(model, alphabet, seed_text, length, rng, temperature=0.8):
    """Write `length` characters after `seed_text`, each drawn from the model's
    probabilities for the next character given the last WINDOW characters."""
    index = {c: i for i, c in enumerate(alphabet)}
    codes = [index[c] for c in seed_text]
    context = np.zeros((1, WINDOW), dtype=np.int64)  # zeros: masked padding
    for _ in range(length):
        recent = codes[-WINDOW:]
        context[0, :WINDOW - len(recent)] = 0
        context[0, WINDOW - len(recent):] = np.add(recent, 1)
        p = model.predict(context)[0, -1].astype(np.float64)  # next-character probabilities
        logp = np.log(np.maximum(p, 1e-12)) / temperature
        p = np.exp(logp - logp.max())
        codes.append(int(rng.choice(len(alphabet), p=p / p.sum())))
    return "".join(alphabet[i] for i in codes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 20)))
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--length", type=int, default=300, help="characters per sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    text = fusenn.datasets.load_genesis()
    alphabet = sorted(set(text))
    codes = np.array([alphabet.index(c) for c in text], dtype=np.int64)
    split = int(0.9 * len(codes))
    train, held_out = codes[:split], codes[split:]

    def windows(c, step):
        # inputs: WINDOW characters numbered from 1; targets: each one's next character
        starts = np.arange(0, len(c) - WINDOW - 1, step)
        X = np.stack([c[s:s + WINDOW] for s in starts]) + 1
        return X, np.stack([c[s + 1:s + WINDOW + 1] for s in starts])

    X, Y = windows(train, step=WINDOW // 4)  # overlapping windows: every character is read often
    Xh, Yh = windows(held_out, step=WINDOW)
    print(f"{len(text)} characters, {len(alphabet)} distinct; {len(X)} training windows of "
          f"{WINDOW}")

    model = fusenn.Sequential([
        Embedding(len(alphabet) + 1, 32, mask_zero=True),   # a learned vector per character
        GRU(args.units, return_sequences=True),             # the state after each character
        Dense(len(alphabet), activation="softmax"),         # next-character probabilities
    ], input_shape=(WINDOW,), seed=args.seed)
    model.compile(loss="cross_entropy", optimizer=fusenn.Adam(lr=3e-3))
    model.summary()

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        loss = model.fit(X, Y, epochs=1, batch_size=64, verbose=0).history["loss"][-1]
        line = sample(model, alphabet, "And God said", 60, rng).replace("\n", " / ")
        print(f"epoch {epoch + 1:3d}  loss {loss:.3f}  {line!r}")
    seconds = time.perf_counter() - start

    held = model.evaluate(Xh, Yh)
    print(f"trained {args.epochs} epochs in {seconds:.1f} s "
          f"({seconds / max(args.epochs, 1) * 1e3:.0f} ms per epoch)")
    print(f"held-out perplexity per character: {np.exp(held['loss']):.3f}")
    print("sample:")
    print(sample(model, alphabet, "In the beginning", args.length, rng))


if __name__ == "__main__":
    main()
