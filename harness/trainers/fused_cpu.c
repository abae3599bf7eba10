/* The batched trainer's CPU fast path: whole training runs of one-hidden-layer models, in C.

   With torch ops, 1000 models spend ~10 ms a step moving (models, hidden, samples) activations
   through memory a dozen times. Here a block of LANES models is trained from its first step to
   its last with everything in the core's L1 cache: the models sit side by side in the lanes of
   the vector registers (LANES floats, one AVX-512 register or two AVX2 ones), and every loop
   over the lanes compiles to vector instructions. Each step walks the training samples once
   (forward, loss, accuracy, gradients), then the validation samples (forward, loss, accuracy),
   then applies SGD with momentum: what batched.train_batch does with torch ops, in the same
   order, step for step (harness/trainers/fused_triton.py is the same step as one Triton kernel on CUDA).

   Built by harness/trainers/fused_cpu.py with the machine's C compiler on first use; plain C11, no
   libraries. exp and log are written out below so that they vectorize too. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
/* a loop over the lanes: one vector instruction per statement (-fopenmp-simd; a compiler
   without it vectorizes what it can) */
#define EACH_LANE _Pragma("omp simd") for (int l = 0; l < LANES; l++)

typedef union { float f; uint32_t u; } bits;

/* exp(x) for x <= 0, as Cephes' expf: x = n ln2 + r with |r| <= ln2/2, then a degree-6
   polynomial in r, scaled by 2^n. Within 2 ulp of libm; NaN stays NaN. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;  /* exp(-87) ~ 1.6e-38: below that the terms no longer count */
    bits n = {x * 1.44269504088896341f + 12582912.0f};  /* round(x / ln2) in the low bits */
    float k = n.f - 12582912.0f;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    bits scale = {.u = (n.u - 0x4B400000u + 127u) << 23};
    return p * scale.f;
}

/* log(s) for s >= 1 (a sum of exponentials whose largest term is 1), as Cephes' logf:
   s = 2^e m with m in [sqrt(1/2), sqrt(2)), then a polynomial in m - 1. NaN stays NaN. */
static inline float log_at_least_one(float s) {
    bits b = {s};
    float e = (float)(int32_t)((b.u >> 23) - 126u);
    b.u = (b.u & 0x007FFFFFu) | 0x3F000000u;  /* the mantissa, in [0.5, 1) */
    float m = b.f;
    int small = m < 0.707106781186547524f;
    e = small ? e - 1.0f : e;
    float x = small ? m + m - 1.0f : m - 1.0f;
    float z = x * x;
    float y = 7.0376836292e-2f;
    y = y * x - 1.1514610310e-1f;
    y = y * x + 1.1676998740e-1f;
    y = y * x - 1.2420140846e-1f;
    y = y * x + 1.4249322787e-1f;
    y = y * x - 1.6668057665e-1f;
    y = y * x + 2.0000714765e-1f;
    y = y * x - 2.4999993993e-1f;
    y = y * x + 3.3333331174e-1f;
    y = y * x * z;
    y += -2.12194440e-4f * e;
    y += -0.5f * z;
    float r = x + y + 0.693359375f * e;
    return r + (s - s);  /* NaN and inf in give NaN out */
}

/* The weights, their gradients and momentum buffers of one block, lanes innermost:
   w1[(j * F1 + f) * LANES + l] (f = F is the bias), w2[(c * H + j) * LANES + l], b2[c * LANES + l].
   w1, w2 and b2 lie back to back (P = H F1 + 3 H + 3 rows of LANES from w1), and so do v1, v2,
   vb2 and g1, g2, gb2: what is done to every weight alike runs over the P rows at once. */
typedef struct {
    float *w1, *w2, *b2, *g1, *g2, *gb2, *v1, *v2, *vb2, *h;
} Block;

/* Sample s's hidden activations (into h) and three logits of every lane. */
static inline void forward(const Block *b, int64_t H, int64_t F1, const float *xs, float l0[LANES], float l1[LANES],
                           float l2[LANES]) {
    for (int64_t j = 0; j < H; j++) {
        float *hj = b->h + j * LANES;
        const float *w = b->w1 + j * F1 * LANES;
        float z[LANES] = {0};
        for (int64_t f = 0; f < F1; f++)
            EACH_LANE z[l] += w[f * LANES + l] * xs[f];
        EACH_LANE hj[l] = z[l] < 0.0f ? 0.0f : z[l];  /* a relu that keeps NaN */
    }
    float a0[LANES] = {0}, a1[LANES] = {0}, a2[LANES] = {0};
    for (int64_t j = 0; j < H; j++) {
        const float *hj = b->h + j * LANES;
        const float *w0 = b->w2 + j * LANES, *w1 = b->w2 + (H + j) * LANES, *w2 = b->w2 + (2 * H + j) * LANES;
        EACH_LANE {
            a0[l] += w0[l] * hj[l];
            a1[l] += w1[l] * hj[l];
            a2[l] += w2[l] * hj[l];
        }
    }
    EACH_LANE {
        l0[l] = a0[l] + b->b2[l];
        l1[l] = a1[l] + b->b2[LANES + l];
        l2[l] = a2[l] + b->b2[2 * LANES + l];
    }
}

/* Per lane: the largest logit m, log(sum(exp(l - m))), this sample's cross-entropy added to
   loss, and 1 added to correct where the first best class is y. As log_softmax does, m is not
   added back into the log-sum. */
static inline void measure(const float l0[LANES], const float l1[LANES], const float l2[LANES], int64_t y,
                           float m[LANES], float log_sum[LANES], float loss[LANES], float correct[LANES]) {
    const float *picked = y == 0 ? l0 : (y == 1 ? l1 : l2);
    const float label = (float)y;
    EACH_LANE {
        float a = l0[l], b = l1[l], c = l2[l];
        float mx = (b > a) | (b != b) ? b : a;
        mx = (a != a) ? a : mx;
        mx = (c > mx) | (c != c) ? c : mx;  /* NaN wins, as torch's max */
        float s = exp_nonpositive(a - mx) + exp_nonpositive(b - mx) + exp_nonpositive(c - mx);
        float ls = log_at_least_one(s);
        float predicted = b > a ? 1.0f : 0.0f;
        float best = b > a ? b : a;
        predicted = c > best ? 2.0f : predicted;
        m[l] = mx;
        log_sum[l] = ls;
        loss[l] += ls - (picked[l] - mx);
        correct[l] += predicted == label ? 1.0f : 0.0f;
    }
}

/* One model's n values into lane l of n rows, and back. */
static void to_lane(float *rows, const float *model, int64_t n, int64_t l) {
    for (int64_t i = 0; i < n; i++) rows[i * LANES + l] = model[i];
}

static void from_lane(float *model, const float *rows, int64_t n, int64_t l) {
    for (int64_t i = 0; i < n; i++) model[i] = rows[i * LANES + l];
}

static void train_block(int64_t first, int64_t end, int64_t K, int64_t H, int64_t F, float *w1, float *w2, float *b2,
                        float *v1, float *v2, float *vb2, const float *lr, const float *momentum,
                        const int64_t *iterations, const float *x, const int64_t *y, int64_t n,
                        const float *xv, const int64_t *yv, int64_t nv, int64_t steps, float *history,
                        int64_t *last_step, uint8_t *diverged, int64_t n_snaps, const int64_t *snap_steps,
                        const int64_t *slots, float *snapshots, Block *b) {
    const int64_t F1 = F + 1, n1 = H * F1, n2 = 3 * H, P = n1 + n2 + 3;
    int64_t snap = 0;
    int active[LANES];
    float rate[LANES], mu[LANES];
    int64_t last[LANES];
    int64_t lanes = end - first < LANES ? end - first : LANES;

    /* gather the block's models into lanes; lanes past K stay zero and inactive */
    memset(b->w1, 0, sizeof(float) * LANES * 3 * P);  /* weights, buffers, gradients (see Block) */
    for (int l = 0; l < LANES; l++) {
        active[l] = l < lanes;
        rate[l] = l < lanes ? lr[first + l] : 0.0f;
        mu[l] = l < lanes ? momentum[first + l] : 0.0f;
        last[l] = l < lanes ? last_step[first + l] : 0;
    }
    for (int64_t l = 0; l < lanes; l++) {
        int64_t k = first + l;
        to_lane(b->w1, w1 + k * n1, n1, l);
        to_lane(b->w2, w2 + k * n2, n2, l);
        to_lane(b->b2, b2 + k * 3, 3, l);
        to_lane(b->v1, v1 + k * n1, n1, l);
        to_lane(b->v2, v2 + k * n2, n2, l);
        to_lane(b->vb2, vb2 + k * 3, 3, l);
    }

    float xs[F1];
    for (int64_t step = 0; step < steps; step++) {
        int any = 0;
        for (int l = 0; l < LANES; l++) any |= active[l];
        if (!any) break;

        /* the weights this step measures, where a boundary is to be drawn from them */
        if (snap < n_snaps && snap_steps[snap] == step) {
            for (int64_t l = 0; l < lanes; l++) {
                int64_t slot = slots[snap * K + first + l];
                if (slot < 0) continue;  /* this model draws nothing at this step */
                from_lane(snapshots + slot * P, b->w1, P, l);  /* [w1 | w2 | b2] */
            }
            snap++;
        }

        /* forward and backward over the training samples */
        memset(b->g1, 0, sizeof(float) * LANES * n1);
        memset(b->g2, 0, sizeof(float) * LANES * n2);
        memset(b->gb2, 0, sizeof(float) * LANES * 3);
        float loss[LANES] = {0}, correct[LANES] = {0};
        for (int64_t s = 0; s < n; s++) {
            float l0[LANES], l1[LANES], l2[LANES], m[LANES], log_sum[LANES], d0[LANES], d1[LANES], d2[LANES];
            for (int64_t f = 0; f < F; f++) xs[f] = x[s * F + f];
            xs[F] = 1.0f;
            forward(b, H, F1, xs, l0, l1, l2);
            measure(l0, l1, l2, y[s], m, log_sum, loss, correct);
            /* d(mean loss)/d(logits): softmax minus the one-hot label, over the sample count */
            EACH_LANE {
                d0[l] = (exp_nonpositive((l0[l] - m[l]) - log_sum[l]) - (y[s] == 0 ? 1.0f : 0.0f)) / (float)n;
                d1[l] = (exp_nonpositive((l1[l] - m[l]) - log_sum[l]) - (y[s] == 1 ? 1.0f : 0.0f)) / (float)n;
                d2[l] = (exp_nonpositive((l2[l] - m[l]) - log_sum[l]) - (y[s] == 2 ? 1.0f : 0.0f)) / (float)n;
                b->gb2[l] += d0[l];
                b->gb2[LANES + l] += d1[l];
                b->gb2[2 * LANES + l] += d2[l];
            }
            for (int64_t j = 0; j < H; j++) {
                const float *hj = b->h + j * LANES;
                const float *w0 = b->w2 + j * LANES, *w1r = b->w2 + (H + j) * LANES, *w2r = b->w2 + (2 * H + j) * LANES;
                float *g0 = b->g2 + j * LANES, *g1r = b->g2 + (H + j) * LANES, *g2r = b->g2 + (2 * H + j) * LANES;
                float dh[LANES];
                EACH_LANE {
                    g0[l] += d0[l] * hj[l];
                    g1r[l] += d1[l] * hj[l];
                    g2r[l] += d2[l] * hj[l];
                    float back = w0[l] * d0[l] + w1r[l] * d1[l] + w2r[l] * d2[l];
                    dh[l] = hj[l] > 0.0f ? back : 0.0f;
                }
                float *g = b->g1 + j * F1 * LANES;
                for (int64_t f = 0; f < F1; f++)
                    EACH_LANE g[f * LANES + l] += dh[l] * xs[f];
            }
        }

        /* forward over the validation samples */
        float val_loss[LANES] = {0}, val_correct[LANES] = {0};
        for (int64_t s = 0; s < nv; s++) {
            float l0[LANES], l1[LANES], l2[LANES], m[LANES], log_sum[LANES];
            for (int64_t f = 0; f < F; f++) xs[f] = xv[s * F + f];
            xs[F] = 1.0f;
            forward(b, H, F1, xs, l0, l1, l2);
            measure(l0, l1, l2, yv[s], m, log_sum, val_loss, val_correct);
        }

        /* the running models measured this step; a non-finite loss ends a model here */
        for (int64_t l = 0; l < lanes; l++) {
            if (!active[l]) continue;
            int64_t k = first + l;
            float train_loss = loss[l] / (float)n;
            float *row = history + step * K + k;
            row[0] = train_loss;
            row[steps * K] = correct[l] / (float)n;
            row[2 * steps * K] = val_loss[l] / (float)nv;
            row[3 * steps * K] = val_correct[l] / (float)nv;
            last[l] = step;
            if (train_loss - train_loss != 0.0f) {  /* NaN or inf */
                diverged[k] = 1;
                active[l] = 0;
            } else if (step >= iterations[k]) {
                active[l] = 0;
            }
        }

        /* SGD with momentum, as torch.optim.SGD does it; stopped models do not move */
        float move[LANES], keep_rate[LANES];
        EACH_LANE {
            move[l] = active[l] ? 1.0f : 0.0f;
            keep_rate[l] = active[l] ? rate[l] : 0.0f;
        }
        for (int64_t i = 0; i < P; i++) {  /* w1, w2 and b2 in one pass (see Block) */
            float *w = b->w1 + i * LANES, *v = b->v1 + i * LANES, *g = b->g1 + i * LANES;
            EACH_LANE {
                float buf = v[l] * mu[l] + g[l];
                v[l] = move[l] != 0.0f ? buf : v[l];
                w[l] = move[l] != 0.0f ? w[l] - keep_rate[l] * buf : w[l];
            }
        }
    }

    /* scatter the lanes back */
    for (int64_t l = 0; l < lanes; l++) {
        int64_t k = first + l;
        last_step[k] = last[l];
        from_lane(w1 + k * n1, b->w1, n1, l);
        from_lane(w2 + k * n2, b->w2, n2, l);
        from_lane(b2 + k * 3, b->b2, 3, l);
        from_lane(v1 + k * n1, b->v1, n1, l);
        from_lane(v2 + k * n2, b->v2, n2, l);
        from_lane(vb2 + k * 3, b->vb2, 3, l);
    }
}

int lanes(void) { return LANES; }

/* Train models first_model .. end_model - 1 (a multiple of LANES apart, but for the last
   block) from step 0 to their iteration count, in place. Model-major arrays, as
   batched.train_batch keeps them: w1 (K, H, F + 1) with the bias last, w2 (K, 3, H), b2
   (K, 3), their momentum buffers v1, v2, vb2 likewise; history (4, steps, K), NaN where not
   written; x (n, F) and xv (nv, F) row-major. At each of the n_snaps steps snap_steps (in
   increasing order), the weights of each running model k with a slot (slots[snap, k] >= 0)
   are copied, before that step's update, to row slots[snap, k] of snapshots (rows of
   P = H (F + 1) + 3 H + 3 floats: [w1 | w2 | b2]).
   Returns 0, or -1 when out of memory. */
int train_models(int64_t first_model, int64_t end_model, int64_t K, int64_t H, int64_t F, float *w1, float *w2,
                 float *b2, float *v1, float *v2, float *vb2, const float *lr, const float *momentum,
                 const int64_t *iterations, const float *x, const int64_t *y, int64_t n, const float *xv,
                 const int64_t *yv, int64_t nv, int64_t steps, float *history, int64_t *last_step,
                 uint8_t *diverged, int64_t n_snaps, const int64_t *snap_steps, const int64_t *slots,
                 float *snapshots) {
    const int64_t n1 = H * (F + 1), n2 = 3 * H;
    /* w1 g1 v1 (n1 each), w2 g2 v2 (n2 each), b2 gb2 vb2 (3 each), h (H) */
    size_t floats = (size_t)LANES * (3 * n1 + 3 * n2 + 9 + H);
    float *memory = aligned_alloc(64, ((sizeof(float) * floats + 63) / 64) * 64);
    if (!memory) return -1;
    Block b;
    b.w1 = memory;
    b.w2 = b.w1 + LANES * n1;
    b.b2 = b.w2 + LANES * n2;
    b.v1 = b.b2 + LANES * 3;
    b.v2 = b.v1 + LANES * n1;
    b.vb2 = b.v2 + LANES * n2;
    b.g1 = b.vb2 + LANES * 3;
    b.g2 = b.g1 + LANES * n1;
    b.gb2 = b.g2 + LANES * n2;
    b.h = b.gb2 + LANES * 3;
    for (int64_t first = first_model; first < end_model; first += LANES)
        train_block(first, end_model < K ? end_model : K, K, H, F, w1, w2, b2, v1, v2, vb2, lr, momentum, iterations,
                    x, y, n, xv, yv, nv, steps, history, last_step, diverged, n_snaps, snap_steps, slots, snapshots, &b);
    free(memory);
    return 0;
}

/* The class that each of M one-hidden-layer models predicts at each of n points (the first of
   the largest logits, as stacked.predicted_classes): for the boundary images, whose grid has
   tens of thousands of points. Model-major weights as train_models keeps them (w1 (M, H, F + 1)
   with the bias last, w2 (M, 3, H), b2 (M, 3)); grid (F, n) features-major, n a multiple of
   GRID_POINTS; out (M, n). The points sit in the vector lanes; a block of them goes through
   the hidden units one at a time, so the activations never leave the registers and L1. */
#define GRID_POINTS 64
void grid_classes(int64_t M, int64_t H, int64_t F, const float *w1, const float *w2, const float *b2,
                  const float *grid, int64_t n, uint8_t *out) {
    for (int64_t m = 0; m < M; m++) {
        const float *a = w1 + m * H * (F + 1), *c = w2 + m * 3 * H, *bias = b2 + m * 3;
        for (int64_t start = 0; start < n; start += GRID_POINTS) {
            float l0[GRID_POINTS], l1[GRID_POINTS], l2[GRID_POINTS], hidden[GRID_POINTS];
            _Pragma("omp simd") for (int p = 0; p < GRID_POINTS; p++) l0[p] = l1[p] = l2[p] = 0.0f;
            for (int64_t h = 0; h < H; h++) {
                const float *row = a + h * (F + 1);
                _Pragma("omp simd") for (int p = 0; p < GRID_POINTS; p++) hidden[p] = 0.0f;
                for (int64_t f = 0; f < F; f++) {
                    const float *xs = grid + f * n + start;
                    const float weight = row[f];
                    _Pragma("omp simd") for (int p = 0; p < GRID_POINTS; p++) hidden[p] += weight * xs[p];
                }
                const float b = row[F], c0 = c[h], c1 = c[H + h], c2 = c[2 * H + h];
                _Pragma("omp simd") for (int p = 0; p < GRID_POINTS; p++) {
                    float v = hidden[p] + b;
                    v = v < 0.0f ? 0.0f : v;  /* as torch's relu: NaN stays NaN */
                    l0[p] += c0 * v;
                    l1[p] += c1 * v;
                    l2[p] += c2 * v;
                }
            }
            uint8_t *o = out + m * n + start;
            _Pragma("omp simd") for (int p = 0; p < GRID_POINTS; p++) {
                float best = l0[p] + bias[0], v1 = l1[p] + bias[1], v2 = l2[p] + bias[2];
                uint8_t k = 0;
                if (v1 > best) { best = v1; k = 1; }
                if (v2 > best) k = 2;
                o[p] = k;
            }
        }
    }
}
