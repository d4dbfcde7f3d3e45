// Fused CPU Mamba block for one input channel (d_model = 1; ours): in_proj, depthwise causal conv +
// SiLU, x_proj, dt_proj + softplus, the selective scan, the D skip, the SiLU(z) gate and out_proj in one
// pass over the positions, on packed sequences of different lengths. Compiled at first use by
// papers_shared.ssm.ops._native and called through ctypes (papers_shared.ssm.ops.mamba_block).
//
// Per position t and inner channel c (Gu & Dao 2023, Sec. 3.4 and Alg. 2; state-spaces/mamba
// mamba_simple.py:Mamba with bias=False):
//     pre_c  = cb_c + wx_c sum_k K_ck u_{t-(w-1)+k}       (in_proj row wx, zero left padding)
//     x_c    = silu(pre_c),    p = Xp x  (dt_in: R rows, B: N rows, C: N rows)
//     dt_c   = softplus(Wdt_c . dt_in + bdt_c)
//     h_cn   = exp(dt_c A_cn) h_cn + dt_c x_c B_n,   y_c = sum_n C_n h_cn + D_c x_c
//     out_t  = sum_c wo_c y_c silu(wz_c u_t)
// Positions are processed in blocks of kBlock: the position-parallel parts (conv, projections, gate)
// as loops over the block that vectorise, the recurrence sequentially with the states of all channels
// in a small buffer. The forward pass stores the state at each block start; the backward pass
// recomputes one block at a time from it (states and decays of the block in scratch) and runs the
// adjoint in reverse. Parameter gradients go to per-thread buffers that the caller sums: no atomics.
#include "_cpu_common.h"

namespace {

using namespace papers_kernels;

constexpr int64_t kBlock = 64;

template <typename T>
struct Params {
  const T *wx, *wz, *ck, *cb, *xp, *wdt, *bdt, *A, *D, *wo;
  int64_t di, dc, R, N;
};

// Offsets of each parameter's gradient in one thread's flat gradient buffer (same order as Params).
struct GradLayout {
  int64_t wx, wz, ck, cb, xp, wdt, bdt, A, D, wo, total;
};

GradLayout grad_layout(int64_t di, int64_t dc, int64_t R, int64_t N) {
  GradLayout g{};
  int64_t o = 0;
  g.wx = o, o += di;
  g.wz = o, o += di;
  g.ck = o, o += di * dc;
  g.cb = o, o += di;
  g.xp = o, o += (R + 2 * N) * di;
  g.wdt = o, o += di * R;
  g.bdt = o, o += di;
  g.A = o, o += di * N;
  g.D = o, o += di;
  g.wo = o, o += di;
  g.total = o;
  return g;
}

// Scratch of one block: rows of kBlock positions per channel ([feature][t] layout).
template <typename T>
struct Work {
  std::vector<T> cs, pre, xc, draw, dt, y, proj, dec, inp, hs, dy, dxc, ddt, dproj, gk, sgb;
  Work(int64_t di, int64_t N, int64_t P, bool backward)
      : cs(di * kBlock), pre(di * kBlock), xc(di * kBlock), draw(di * kBlock), dt(di * kBlock),
        y(di * kBlock), proj(P * kBlock), dec(di * N * kBlock), inp(di * N * kBlock),
        hs(backward ? (kBlock + 1) * di * N : 0), dy(backward ? di * kBlock : 0), dxc(backward ? di * kBlock : 0),
        ddt(backward ? di * kBlock : 0), dproj(backward ? P * kBlock : 0),
        gk(backward ? di * N * kBlock : 0), sgb(backward ? kBlock : 0) {}
};

// Positions s0 .. s0+len-1 of one sequence u (t indexes the block). h: the state before the block
// (di x N), updated in place. keep: store the states (hs[t+1], hs[0] = state before); the decays of
// the block stay in w.dec.
// out (nullable): write out_{s0+t}.
template <typename T, int NS>
void block_forward(const Params<T> &p, const T *__restrict u, int64_t s0, int64_t len, T *__restrict h,
                   Work<T> &w, bool keep, T *__restrict out) {
  const int64_t di = p.di, dc = p.dc, R = p.R, N = NS > 0 ? NS : p.N, P = R + 2 * N;
  for (int64_t c = 0; c < di; ++c) {
    T *cs = w.cs.data() + c * kBlock;
    std::fill(cs, cs + len, T(0));
    for (int64_t k = 0; k < dc; ++k) {
      const int64_t off = s0 + k - (dc - 1);  // u index of position t: off + t
      const int64_t t0 = off < 0 ? std::min(len, -off) : 0;
      const T kv = p.ck[c * dc + k];
      const T *us = u + off;
#pragma omp simd
      for (int64_t t = t0; t < len; ++t) cs[t] += kv * us[t];
    }
    T *pre = w.pre.data() + c * kBlock, *xc = w.xc.data() + c * kBlock;
    const T b = p.cb[c], wx = p.wx[c];
#pragma omp simd
    for (int64_t t = 0; t < len; ++t) {
      const T v = b + wx * cs[t];
      pre[t] = v;
      xc[t] = v * fsigmoid(v);
    }
  }
  for (int64_t k = 0; k < P; ++k) {
    T *row = w.proj.data() + k * kBlock;
    std::fill(row, row + len, T(0));
    for (int64_t c = 0; c < di; ++c) {
      const T wv = p.xp[k * di + c];
      const T *xc = w.xc.data() + c * kBlock;
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) row[t] += wv * xc[t];
    }
  }
  for (int64_t c = 0; c < di; ++c) {
    T *dr = w.draw.data() + c * kBlock, *dt = w.dt.data() + c * kBlock;
    std::fill(dr, dr + len, p.bdt[c]);
    for (int64_t r = 0; r < R; ++r) {
      const T wv = p.wdt[c * R + r];
      const T *pr = w.proj.data() + r * kBlock;
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) dr[t] += wv * pr[t];
    }
#pragma omp simd
    for (int64_t t = 0; t < len; ++t) dt[t] = fsoftplus(dr[t]);
  }
  // decays exp(dt A) and inputs dt x B of every (channel, state) pair for the whole block: loops over
  // positions that vectorise and keep the exp latency off the sequential recurrence below
  for (int64_t c = 0; c < di; ++c) {
    const T *dtc = w.dt.data() + c * kBlock, *xcc = w.xc.data() + c * kBlock;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t j = c * N + n;
      const T Aj = p.A[j];
      const T *Bn = w.proj.data() + (R + n) * kBlock;
      T *dj = w.dec.data() + j * kBlock, *ij = w.inp.data() + j * kBlock;
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) {
        dj[t] = fexp(dtc[t] * Aj);
        ij[t] = dtc[t] * xcc[t] * Bn[t];
      }
    }
  }
  const int64_t S = di * N;
  constexpr int64_t H = kBlock + 1;  // hs: per pair j a row of the block's states, hs[j * H] = before
  if (keep)
    for (int64_t j = 0; j < S; ++j) w.hs[j * H] = h[j];
  const T *dec = w.dec.data(), *inp = w.inp.data(), *Cm = w.proj.data() + (R + N) * kBlock;
  for (int64_t t = 0; t < len; ++t) {
    T *hk = keep ? w.hs.data() + t + 1 : nullptr;
    for (int64_t c = 0; c < di; ++c) {
      T acc = 0;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t j = c * N + n;
        const T hn = dec[j * kBlock + t] * h[j] + inp[j * kBlock + t];
        h[j] = hn;
        acc += Cm[n * kBlock + t] * hn;
        if (keep) hk[j * H] = hn;
      }
      w.y[c * kBlock + t] = acc + p.D[c] * w.xc[c * kBlock + t];
    }
  }
  if (out) {
    T *o = out + s0;
    std::fill(o, o + len, T(0));
    const T *us = u + s0;
    for (int64_t c = 0; c < di; ++c) {
      const T wo = p.wo[c], wz = p.wz[c];
      const T *y = w.y.data() + c * kBlock;
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) {
        const T z = wz * us[t];
        o[t] += wo * y[t] * z * fsigmoid(z);
      }
    }
  }
}

template <typename T, int NS>
void block_backward(const Params<T> &p, const T *__restrict u, const T *__restrict gout, int64_t s0, int64_t len,
                    T *__restrict g, Work<T> &w, T *__restrict du, T *__restrict G, const GradLayout &L) {
  const int64_t di = p.di, dc = p.dc, R = p.R, N = NS > 0 ? NS : p.N, P = R + 2 * N;
  const T *us = u + s0, *go = gout + s0;
  T *dus = du + s0;
  // gate and out_proj; D skip
  for (int64_t c = 0; c < di; ++c) {
    const T wo = p.wo[c], wz = p.wz[c], Dc = p.D[c];
    const T *y = w.y.data() + c * kBlock, *xc = w.xc.data() + c * kBlock;
    T *dy = w.dy.data() + c * kBlock, *dxc = w.dxc.data() + c * kBlock;
    T swo = 0, swz = 0, sD = 0;
#pragma omp simd reduction(+ : swo, swz, sD)
    for (int64_t t = 0; t < len; ++t) {
      const T z = wz * us[t], sg = fsigmoid(z), sz = z * sg;
      const T dyg = go[t] * wo;
      swo += go[t] * y[t] * sz;
      const T dz = dyg * y[t] * sg * (T(1) + z * (T(1) - sg));
      swz += dz * us[t];
      dus[t] += dz * wz;
      const T dyv = dyg * sz;
      dy[t] = dyv;
      sD += dyv * xc[t];
      dxc[t] = dyv * Dc;
    }
    G[L.wo + c] += swo;
    G[L.wz + c] += swz;
    G[L.D + c] += sD;
  }
  // adjoint scan: the sequential part is only g_t = g_{t+1} a_{t+1} + dy_t C_t per (channel, state)
  // pair (g carries dL/dh across positions and blocks); everything else is a vectorised loop over the
  // block's positions afterwards
  constexpr int64_t H = kBlock + 1;
  const T *Cm = w.proj.data() + (R + N) * kBlock, *dec = w.dec.data();
  T *gk = w.gk.data();
  for (int64_t t = len - 1; t >= 0; --t) {
    for (int64_t c = 0; c < di; ++c) {
      const T gy = w.dy[c * kBlock + t];
      for (int64_t n = 0; n < N; ++n) {
        const int64_t j = c * N + n;
        const T gj = g[j] + gy * Cm[n * kBlock + t];
        gk[j * kBlock + t] = gj;
        g[j] = gj * dec[j * kBlock + t];
      }
    }
  }
  for (int64_t k = R; k < P; ++k) std::fill(w.dproj.data() + k * kBlock, w.dproj.data() + k * kBlock + len, T(0));
  T *sgb = w.sgb.data();
  for (int64_t c = 0; c < di; ++c) {
    const T *__restrict dtc = w.dt.data() + c * kBlock;
    const T *__restrict xcc = w.xc.data() + c * kBlock;
    const T *__restrict dyc = w.dy.data() + c * kBlock;
    T *__restrict ddt = w.ddt.data() + c * kBlock;
    std::fill(ddt, ddt + len, T(0));
    std::fill(sgb, sgb + len, T(0));
    for (int64_t n = 0; n < N; ++n) {
      const int64_t j = c * N + n;
      const T Aj = p.A[j];
      const T *__restrict gj = gk + j * kBlock;
      const T *__restrict hj = w.hs.data() + j * H;
      const T *__restrict aj = dec + j * kBlock;
      const T *__restrict Bn = w.proj.data() + (R + n) * kBlock;
      T *__restrict dB = w.dproj.data() + (R + n) * kBlock;
      T *__restrict dC = w.dproj.data() + (R + N + n) * kBlock;
      T sA = 0;
#pragma omp simd reduction(+ : sA)
      for (int64_t t = 0; t < len; ++t) {
        dC[t] += dyc[t] * hj[t + 1];
        const T ga = gj[t] * hj[t] * aj[t];
        ddt[t] += ga * Aj;
        sA += ga * dtc[t];
        dB[t] += gj[t] * dtc[t] * xcc[t];
        sgb[t] += gj[t] * Bn[t];
      }
      G[L.A + j] += sA;
    }
    T *__restrict dxc = w.dxc.data() + c * kBlock;
#pragma omp simd
    for (int64_t t = 0; t < len; ++t) {
      ddt[t] += sgb[t] * xcc[t];
      dxc[t] += sgb[t] * dtc[t];
    }
  }
  // softplus and dt_proj
  for (int64_t r = 0; r < R; ++r) std::fill(w.dproj.data() + r * kBlock, w.dproj.data() + r * kBlock + len, T(0));
  for (int64_t c = 0; c < di; ++c) {
    T *dd = w.ddt.data() + c * kBlock;
    const T *dr = w.draw.data() + c * kBlock;
    T sb = 0;
#pragma omp simd reduction(+ : sb)
    for (int64_t t = 0; t < len; ++t) {
      dd[t] *= fsigmoid(dr[t]);
      sb += dd[t];
    }
    G[L.bdt + c] += sb;
    for (int64_t r = 0; r < R; ++r) {
      const T wv = p.wdt[c * R + r];
      const T *pr = w.proj.data() + r * kBlock;
      T *dp = w.dproj.data() + r * kBlock;
      T sw = 0;
#pragma omp simd reduction(+ : sw)
      for (int64_t t = 0; t < len; ++t) {
        sw += dd[t] * pr[t];
        dp[t] += wv * dd[t];
      }
      G[L.wdt + c * R + r] += sw;
    }
  }
  // x_proj
  for (int64_t k = 0; k < P; ++k) {
    const T *dp = w.dproj.data() + k * kBlock;
    for (int64_t c = 0; c < di; ++c) {
      const T wv = p.xp[k * di + c];
      const T *xc = w.xc.data() + c * kBlock;
      T *dxc = w.dxc.data() + c * kBlock;
      T sx = 0;
#pragma omp simd reduction(+ : sx)
      for (int64_t t = 0; t < len; ++t) {
        sx += dp[t] * xc[t];
        dxc[t] += wv * dp[t];
      }
      G[L.xp + k * di + c] += sx;
    }
  }
  // SiLU, conv bias, in_proj (x rows) and the depthwise conv
  for (int64_t c = 0; c < di; ++c) {
    T *dp = w.dxc.data() + c * kBlock;
    const T *pre = w.pre.data() + c * kBlock, *cs = w.cs.data() + c * kBlock;
    const T wx = p.wx[c];
    T sb = 0, sw = 0;
#pragma omp simd reduction(+ : sb, sw)
    for (int64_t t = 0; t < len; ++t) {
      const T v = pre[t], sg = fsigmoid(v);
      const T dv = dp[t] * sg * (T(1) + v * (T(1) - sg));
      dp[t] = dv;
      sb += dv;
      sw += dv * cs[t];
    }
    G[L.cb + c] += sb;
    G[L.wx + c] += sw;
    for (int64_t k = 0; k < dc; ++k) {
      const int64_t off = s0 + k - (dc - 1);
      const int64_t t0 = off < 0 ? std::min(len, -off) : 0;
      const T kw = p.ck[c * dc + k] * wx;
      const T *uo = u + off;
      T *duo = du + off;
      T sk = 0;
#pragma omp simd reduction(+ : sk)
      for (int64_t t = t0; t < len; ++t) {  // du of earlier positions (du and the scratch dp are distinct)
        sk += dp[t] * uo[t];
        duo[t] += dp[t] * kw;
      }
      G[L.ck + c * dc + k] += sk * wx;
    }
  }
}

inline int64_t num_blocks(int64_t len) { return (len + kBlock - 1) / kBlock; }

// Sequences to threads: longest first, each to the least-loaded thread (deterministic).
std::vector<std::vector<int64_t>> assign(const int64_t *cu, int64_t nseq, int64_t threads) {
  threads = std::max<int64_t>(1, std::min(threads, nseq));
  std::vector<int64_t> order(nseq);
  for (int64_t i = 0; i < nseq; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return cu[a + 1] - cu[a] > cu[b + 1] - cu[b]; });
  std::vector<std::vector<int64_t>> parts(threads);
  std::vector<int64_t> load(threads, 0);
  for (int64_t i : order) {
    int64_t best = 0;
    for (int64_t t = 1; t < threads; ++t)
      if (load[t] < load[best]) best = t;
    parts[best].push_back(i);
    load[best] += cu[i + 1] - cu[i];
  }
  return parts;
}

template <typename F>
void run_parts(const std::vector<std::vector<int64_t>> &parts, F fn) {
  if (parts.size() == 1) {
    NoDenormals guard;
    fn(0, parts[0]);
    return;
  }
  std::vector<std::thread> pool;
  for (size_t t = 0; t < parts.size(); ++t)
    pool.emplace_back([&, t] {
      NoDenormals guard;
      fn(int64_t(t), parts[t]);
    });
  for (auto &th : pool) th.join();
}

// ckpt: the state before every block of every sequence, sequence i's blocks starting at block index
// sum_{j < i} num_blocks(len_j).
std::vector<int64_t> block_offsets(const int64_t *cu, int64_t nseq) {
  std::vector<int64_t> off(nseq + 1, 0);
  for (int64_t i = 0; i < nseq; ++i) off[i + 1] = off[i] + num_blocks(cu[i + 1] - cu[i]);
  return off;
}

template <typename T, int NS>
void forward(const Params<T> &p, const T *u, const int64_t *cu, int64_t nseq, T *out, T *ckpt, int64_t threads) {
  const int64_t S = p.di * (NS > 0 ? NS : p.N), P = p.R + 2 * (NS > 0 ? NS : p.N);
  const auto boff = block_offsets(cu, nseq);
  run_parts(assign(cu, nseq, threads), [&](int64_t, const std::vector<int64_t> &seqs) {
    Work<T> w(p.di, NS > 0 ? NS : p.N, P, false);
    std::vector<T> h(S);
    for (int64_t i : seqs) {
      const int64_t len = cu[i + 1] - cu[i];
      std::fill(h.begin(), h.end(), T(0));
      for (int64_t b = 0; b < num_blocks(len); ++b) {
        std::memcpy(ckpt + (boff[i] + b) * S, h.data(), S * sizeof(T));
        block_forward<T, NS>(p, u + cu[i], b * kBlock, std::min(kBlock, len - b * kBlock), h.data(), w, false,
                             out + cu[i]);
      }
    }
  });
}

template <typename T, int NS>
void backward(const Params<T> &p, const T *u, const int64_t *cu, int64_t nseq, const T *ckpt, const T *gout,
              T *du, T *grads, int64_t threads) {
  const int64_t S = p.di * (NS > 0 ? NS : p.N), P = p.R + 2 * (NS > 0 ? NS : p.N);
  const GradLayout L = grad_layout(p.di, p.dc, p.R, NS > 0 ? NS : p.N);
  const auto boff = block_offsets(cu, nseq);
  run_parts(assign(cu, nseq, threads), [&](int64_t t, const std::vector<int64_t> &seqs) {
    Work<T> w(p.di, NS > 0 ? NS : p.N, P, true);
    std::vector<T> h(S), g(S);
    T *G = grads + t * L.total;
    for (int64_t i : seqs) {
      const int64_t len = cu[i + 1] - cu[i];
      std::fill(g.begin(), g.end(), T(0));
      for (int64_t b = num_blocks(len) - 1; b >= 0; --b) {
        const int64_t s0 = b * kBlock, bl = std::min(kBlock, len - s0);
        std::memcpy(h.data(), ckpt + (boff[i] + b) * S, S * sizeof(T));
        block_forward<T, NS>(p, u + cu[i], s0, bl, h.data(), w, true, nullptr);
        block_backward<T, NS>(p, u + cu[i], gout + cu[i], s0, bl, g.data(), w, du + cu[i], G, L);
      }
    }
  });
}

template <typename T>
Params<T> make_params(const void *const *ptr, int64_t di, int64_t dc, int64_t R, int64_t N) {
  auto f = [&](int i) { return static_cast<const T *>(ptr[i]); };
  return Params<T>{f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8), f(9), di, dc, R, N};
}

template <typename T>
void forward_any(const Params<T> &p, const T *u, const int64_t *cu, int64_t nseq, T *out, T *ckpt, int64_t th) {
  switch (p.N) {
    case 4: return forward<T, 4>(p, u, cu, nseq, out, ckpt, th);
    case 16: return forward<T, 16>(p, u, cu, nseq, out, ckpt, th);
    default: return forward<T, 0>(p, u, cu, nseq, out, ckpt, th);
  }
}

template <typename T>
void backward_any(const Params<T> &p, const T *u, const int64_t *cu, int64_t nseq, const T *ckpt, const T *gout,
                  T *du, T *grads, int64_t th) {
  switch (p.N) {
    case 4: return backward<T, 4>(p, u, cu, nseq, ckpt, gout, du, grads, th);
    case 16: return backward<T, 16>(p, u, cu, nseq, ckpt, gout, du, grads, th);
    default: return backward<T, 0>(p, u, cu, nseq, ckpt, gout, du, grads, th);
  }
}

}  // namespace

extern "C" {

int64_t papers_mamba1_block_size() { return kBlock; }

int64_t papers_mamba1_grad_size(int64_t di, int64_t dc, int64_t R, int64_t N) {
  return grad_layout(di, dc, R, N).total;
}

// dtype: 0 float32, 1 float64. params: wx, wz (di), conv weight (di, dc), conv bias (di), x_proj
// (R + 2N, di), dt_proj weight (di, R), dt_proj bias (di), A (di, N), D (di), out_proj (di).
// cu: nseq + 1 sequence offsets into u / out. ckpt: (sum of blocks, di, N), written.
void papers_mamba1_fwd(int dtype, const void *u, const int64_t *cu, int64_t nseq, const void *const *params,
                       int64_t di, int64_t dc, int64_t R, int64_t N, void *out, void *ckpt, int64_t threads) {
  if (dtype == 0)
    forward_any(make_params<float>(params, di, dc, R, N), static_cast<const float *>(u), cu, nseq,
                static_cast<float *>(out), static_cast<float *>(ckpt), threads);
  else
    forward_any(make_params<double>(params, di, dc, R, N), static_cast<const double *>(u), cu, nseq,
                static_cast<double *>(out), static_cast<double *>(ckpt), threads);
}

// gout: gradient of out; du: gradient of u (zero on entry); grads: (threads, grad_size), zero on entry.
void papers_mamba1_bwd(int dtype, const void *u, const int64_t *cu, int64_t nseq, const void *const *params,
                       int64_t di, int64_t dc, int64_t R, int64_t N, const void *ckpt, const void *gout, void *du,
                       void *grads, int64_t threads) {
  if (dtype == 0)
    backward_any(make_params<float>(params, di, dc, R, N), static_cast<const float *>(u), cu, nseq,
                 static_cast<const float *>(ckpt), static_cast<const float *>(gout), static_cast<float *>(du),
                 static_cast<float *>(grads), threads);
  else
    backward_any(make_params<double>(params, di, dc, R, N), static_cast<const double *>(u), cu, nseq,
                 static_cast<const double *>(ckpt), static_cast<const double *>(gout), static_cast<double *>(du),
                 static_cast<double *>(grads), threads);
}
}
