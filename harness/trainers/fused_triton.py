"""The batched trainer's CUDA fast path: a whole training step in one Triton kernel.

On a GPU, `batched.train_batch` with torch ops moves (K, hidden, samples) activations through
memory a dozen times per step: 100,000 models spend ~14 ms a step there, not in arithmetic.
Here each program holds a block of models' weights in registers and walks the samples once,
accumulating loss, accuracy and gradients, then applies SGD: the activations never leave the
chip. It covers the lecture's architecture (one hidden layer, up to a width x features that
fits the registers: `fits`) and does what the torch path does, step for step: same metrics,
same stopping, same update.

Triton comes with PyTorch's CUDA builds; without it (or on CPU and MPS) the torch path runs.
"""

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch: the torch path is used
    triton = None

BLOCK_MODELS = 16  # models a GPU program trains: 8 to 64 measured within 15% on an H100
MAX_TILE = 1024  # hidden x (features + 1), padded to powers of 2, that a program holds in registers


def fits(hidden: int, n_features: int) -> bool:
    """Whether one hidden layer of this width fits the kernel's registers; wider ones would
    spill (and past 2**20 elements a tile does not compile), so the torch ops train them."""
    return triton.next_power_of_2(hidden) * triton.next_power_of_2(n_features + 1) <= MAX_TILE


if triton is not None:
    @triton.jit
    def _logits(w1, xn, w2_0, w2_1, w2_2, b2_0, b2_1, b2_2):
        """One sample's hidden activations (BM, HP) and three logits (BM,) for every model."""
        h = tl.sum(w1 * xn[None, None, :], axis=2)
        h = tl.where(h < 0, 0.0, h)  # relu that keeps a NaN, as torch's does
        return h, tl.sum(w2_0 * h, axis=1) + b2_0, tl.sum(w2_1 * h, axis=1) + b2_1, tl.sum(w2_2 * h, axis=1) + b2_2

    @triton.jit
    def _measure(l0, l1, l2, yn):
        """The largest logit m and log(sum(exp(l - m))), this sample's cross-entropy, and whether
        the first best class is yn. As log_softmax does, m is not added back into the log-sum:
        with large logits that would round away the small terms."""
        m = tl.maximum(tl.maximum(l0, l1, propagate_nan=tl.PropagateNan.ALL), l2, propagate_nan=tl.PropagateNan.ALL)
        log_sum = tl.log(tl.exp(l0 - m) + tl.exp(l1 - m) + tl.exp(l2 - m))
        best = l0
        predicted = tl.zeros(l0.shape, dtype=tl.int32)
        predicted = tl.where(l1 > best, 1, predicted)
        best = tl.where(l1 > best, l1, best)
        predicted = tl.where(l2 > best, 2, predicted)
        picked = tl.where(yn == 0, l0, tl.where(yn == 1, l1, l2))
        return m, log_sum, log_sum - (picked - m), (predicted == yn).to(tl.float32)

    @triton.jit
    def _sample(x, n, F: tl.constexpr, FP: tl.constexpr):
        """Sample n's features and a constant 1 for the first layer's bias, padded to FP."""
        f = tl.arange(0, FP)
        xn = tl.load(x + n * F + f, mask=f < F, other=0.0)
        return tl.where(f == F, 1.0, xn)

    # the step and the sizes vary from call to call: one compiled kernel serves them all
    @triton.jit(do_not_specialize=["n_train", "n_val", "step", "steps", "K"])
    def train_step(w1_ptr, w2_ptr, b2_ptr, bw1_ptr, bw2_ptr, bb2_ptr, lr_ptr, momentum_ptr, iterations_ptr,
                   active_ptr, diverged_ptr, last_step_ptr, history_ptr, x, y, n_train, x_val, y_val, n_val,
                   step, steps, K, F: tl.constexpr, FP: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
                   BM: tl.constexpr):
        """One step of BM models: metrics on the current weights, stopping, then SGD.
        w1 is (K, H, F + 1) with the bias last, w2 (K, 3, H), b2 (K, 3, 1); history (4, steps, K)."""
        k = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)  # offsets pass 2**31 past 500,000 models
        j = tl.arange(0, HP)
        f = tl.arange(0, FP)
        mk = k < K
        m2 = mk[:, None] & (j[None, :] < H)
        m3 = m2[:, :, None] & (f[None, None, :] <= F)
        at1 = k[:, None, None] * (H * (F + 1)) + j[None, :, None] * (F + 1) + f[None, None, :]
        at2 = k[:, None] * (3 * H) + j[None, :]
        w1 = tl.load(w1_ptr + at1, mask=m3, other=0.0)
        w2_0 = tl.load(w2_ptr + at2, mask=m2, other=0.0)
        w2_1 = tl.load(w2_ptr + at2 + H, mask=m2, other=0.0)
        w2_2 = tl.load(w2_ptr + at2 + 2 * H, mask=m2, other=0.0)
        b2_0 = tl.load(b2_ptr + k * 3, mask=mk, other=0.0)
        b2_1 = tl.load(b2_ptr + k * 3 + 1, mask=mk, other=0.0)
        b2_2 = tl.load(b2_ptr + k * 3 + 2, mask=mk, other=0.0)

        # forward and backward over the training samples, one at a time
        g1 = tl.zeros((BM, HP, FP), dtype=tl.float32)
        g2_0 = tl.zeros((BM, HP), dtype=tl.float32)
        g2_1 = tl.zeros((BM, HP), dtype=tl.float32)
        g2_2 = tl.zeros((BM, HP), dtype=tl.float32)
        gb_0 = tl.zeros((BM,), dtype=tl.float32)
        gb_1 = tl.zeros((BM,), dtype=tl.float32)
        gb_2 = tl.zeros((BM,), dtype=tl.float32)
        loss = tl.zeros((BM,), dtype=tl.float32)
        correct = tl.zeros((BM,), dtype=tl.float32)
        for n in range(n_train):
            xn = _sample(x, n, F, FP)
            yn = tl.load(y + n).to(tl.int32)
            h, l0, l1, l2 = _logits(w1, xn, w2_0, w2_1, w2_2, b2_0, b2_1, b2_2)
            m, log_sum, sample_loss, hit = _measure(l0, l1, l2, yn)
            loss += sample_loss
            correct += hit
            # d(mean loss)/d(logits): softmax minus the one-hot label, over the sample count
            d0 = (tl.exp((l0 - m) - log_sum) - (yn == 0).to(tl.float32)) / n_train
            d1 = (tl.exp((l1 - m) - log_sum) - (yn == 1).to(tl.float32)) / n_train
            d2 = (tl.exp((l2 - m) - log_sum) - (yn == 2).to(tl.float32)) / n_train
            g2_0 += d0[:, None] * h
            g2_1 += d1[:, None] * h
            g2_2 += d2[:, None] * h
            gb_0 += d0
            gb_1 += d1
            gb_2 += d2
            dh = w2_0 * d0[:, None] + w2_1 * d1[:, None] + w2_2 * d2[:, None]
            dh = tl.where(h > 0, dh, 0.0)
            g1 += dh[:, :, None] * xn[None, None, :]
        train_loss = loss / n_train
        train_accuracy = correct / n_train

        val_loss = tl.zeros((BM,), dtype=tl.float32)
        val_correct = tl.zeros((BM,), dtype=tl.float32)
        for n in range(n_val):
            xn = _sample(x_val, n, F, FP)
            yn = tl.load(y_val + n).to(tl.int32)
            h, l0, l1, l2 = _logits(w1, xn, w2_0, w2_1, w2_2, b2_0, b2_1, b2_2)
            _, _, sample_loss, hit = _measure(l0, l1, l2, yn)
            val_loss += sample_loss
            val_correct += hit
        stride = steps * K.to(tl.int64)  # one metric's (steps, K)
        row = history_ptr + step * K.to(tl.int64) + k
        tl.store(row, train_loss, mask=mk)
        tl.store(row + stride, train_accuracy, mask=mk)
        tl.store(row + 2 * stride, val_loss / n_val, mask=mk)
        tl.store(row + 3 * stride, val_correct / n_val, mask=mk)

        # models still running measured this step; a non-finite loss ends a model here
        active = tl.load(active_ptr + k, mask=mk, other=0) != 0
        last_step = tl.load(last_step_ptr + k, mask=mk, other=0)
        tl.store(last_step_ptr + k, tl.where(active, step, last_step), mask=mk)
        finite = (train_loss - train_loss) == 0  # NaN and inf give NaN
        newly_diverged = active & ~finite
        diverged = tl.load(diverged_ptr + k, mask=mk, other=0) != 0
        tl.store(diverged_ptr + k, (diverged | newly_diverged).to(tl.int1), mask=mk)
        iterations = tl.load(iterations_ptr + k, mask=mk, other=0)
        active = active & ~newly_diverged & (step < iterations)
        tl.store(active_ptr + k, active.to(tl.int1), mask=mk)

        # SGD with momentum, as torch.optim.SGD does it; stopped models do not move
        lr = tl.load(lr_ptr + k, mask=mk, other=0.0)
        mu = tl.load(momentum_ptr + k, mask=mk, other=0.0)
        move2 = m2 & active[:, None]
        move3 = m3 & active[:, None, None]
        buf = tl.load(bw1_ptr + at1, mask=move3, other=0.0) * mu[:, None, None] + g1
        tl.store(bw1_ptr + at1, buf, mask=move3)
        tl.store(w1_ptr + at1, w1 - lr[:, None, None] * buf, mask=move3)
        buf = tl.load(bw2_ptr + at2, mask=move2, other=0.0) * mu[:, None] + g2_0
        tl.store(bw2_ptr + at2, buf, mask=move2)
        tl.store(w2_ptr + at2, w2_0 - lr[:, None] * buf, mask=move2)
        buf = tl.load(bw2_ptr + at2 + H, mask=move2, other=0.0) * mu[:, None] + g2_1
        tl.store(bw2_ptr + at2 + H, buf, mask=move2)
        tl.store(w2_ptr + at2 + H, w2_1 - lr[:, None] * buf, mask=move2)
        buf = tl.load(bw2_ptr + at2 + 2 * H, mask=move2, other=0.0) * mu[:, None] + g2_2
        tl.store(bw2_ptr + at2 + 2 * H, buf, mask=move2)
        tl.store(w2_ptr + at2 + 2 * H, w2_2 - lr[:, None] * buf, mask=move2)
        move = mk & active
        buf = tl.load(bb2_ptr + k * 3, mask=move, other=0.0) * mu + gb_0
        tl.store(bb2_ptr + k * 3, buf, mask=move)
        tl.store(b2_ptr + k * 3, b2_0 - lr * buf, mask=move)
        buf = tl.load(bb2_ptr + k * 3 + 1, mask=move, other=0.0) * mu + gb_1
        tl.store(bb2_ptr + k * 3 + 1, buf, mask=move)
        tl.store(b2_ptr + k * 3 + 1, b2_1 - lr * buf, mask=move)
        buf = tl.load(bb2_ptr + k * 3 + 2, mask=move, other=0.0) * mu + gb_2
        tl.store(bb2_ptr + k * 3 + 2, buf, mask=move)
        tl.store(b2_ptr + k * 3 + 2, b2_2 - lr * buf, mask=move)


def step(trained, buffers, lr, momentum, iterations, active, diverged, last_step, history, data, step_index: int):
    """Launch one step for all K models; `trained` is [[W1 | b1], W2, b2] and the rest the
    state that batched.train_batch keeps, all updated in place."""
    k, hidden, f1 = trained[0].shape
    x, x_val = data.x_train.contiguous(), data.x_val.contiguous()
    train_step[(triton.cdiv(k, BLOCK_MODELS),)](
        *trained, *buffers, lr, momentum, iterations, active, diverged, last_step, history,
        x, data.y_train, x.shape[0], x_val, data.y_val, x_val.shape[0], step_index, history.shape[1], k,
        F=f1 - 1, FP=triton.next_power_of_2(f1), H=hidden, HP=triton.next_power_of_2(hidden), BM=BLOCK_MODELS)
