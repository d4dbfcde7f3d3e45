// Fused CPU selective scan (ours): one pass over positions per (batch, channel) pair, the n states in
// registers, exp(dt * A) computed in the loop. Compiled at first use by papers_shared.ssm.ops._native
// (plain C++, no torch headers) and called through ctypes on contiguous buffers.
//
// Recurrence (Gu & Dao 2023, Alg. 2), per pair p = (b, d) and state k:
//     h_s[k] = exp(dt_s A[d, k]) h_{s-1}[k] + dt_s u_s B_s[k],     y_s = sum_k C_s[k] h_s[k]
// B and C are read as base + b * sb + (d / hpg) * sg + s * sl + k, which covers the (d, n),
// (b, l, n) and (b, g, l, n) layouts (the caller transposes mamba-ssm's (b, n, l) to (b, l, n)).
// The backward pass recomputes the pair's states into a scratch buffer and runs the adjoint scan
//     g_s = C_s dy_s + exp(dt_{s+1} A) g_{s+1}
// accumulating dB, dC and dA into per-thread buffers (summed by the caller): no atomics.

#include "_cpu_common.h"

namespace {

using namespace papers_kernels;

struct Layout {
  int64_t sb, sg, hpg, sl;
};

template <typename T>
struct Args {
  const T *dt, *u, *A, *B, *C;
  int64_t nb, nd, nl, nn;
  Layout lb, lc;
};

// The element-wise prologue of both passes: dt = softplus(delta + delta_bias) (delta_bias nullable).
template <typename T>
struct Extras {
  const T *delta_bias;
  int softplus;
};

// NS > 0: the state count is a compile-time constant (the states stay in registers); 0: runtime a.nn.
// One position's update of the n states; __restrict on the (inlined) parameters keeps the compiler
// from versioning the loop on pointer overlap, so the summation order (and the result, to the bit)
// does not depend on where the buffers happen to lie.
template <typename T, int NS>
inline T step(int64_t n, T d, T du, const T *__restrict A, const T *__restrict Bs, const T *__restrict Cs,
              const T *__restrict hprev, T *__restrict h, T *__restrict decay) {
  if constexpr (NS > 0) n = NS;
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) {
    T ak = fexp(d * A[k]);
    if (decay) decay[k] = ak;
    T hk = ak * hprev[k] + du * Bs[k];
    h[k] = hk;
    acc += Cs[k] * hk;
  }
  return acc;
}

// One position of the adjoint scan; returns (sum_k dL/d(dt A_k) A_k, sum_k g_k B_k) through sdt, sdtu.
template <typename T, int NS>
inline void adjoint_step(int64_t n, T d, T dtu, T gys, const T *__restrict A, const T *__restrict Bs,
                         const T *__restrict Cs, const T *__restrict hcur, const T *__restrict hprev,
                         const T *__restrict acur, T *__restrict g, T *__restrict gA, T *__restrict gBs,
                         T *__restrict gCs, T &sdt_out, T &sdtu_out) {
  if constexpr (NS > 0) n = NS;
  T sdt = 0, sdtu = 0;
#pragma omp simd reduction(+ : sdt, sdtu)
  for (int64_t k = 0; k < n; ++k) {
    T gk = g[k] + gys * Cs[k];
    gCs[k] += gys * hcur[k];
    T ga = gk * hprev[k] * acur[k];
    sdt += ga * A[k];
    gA[k] += ga * d;
    sdtu += gk * Bs[k];
    gBs[k] += gk * dtu;
    g[k] = gk * acur[k];
  }
  sdt_out = sdt;
  sdtu_out = sdtu;
}

// dt = softplus(delta + bias) (or delta + bias) for one row of l positions.
template <typename T>
inline void step_sizes(const T *__restrict delta, T bias, int softplus, int64_t l, T *__restrict dt) {
  if (softplus) {
#pragma omp simd
    for (int64_t s = 0; s < l; ++s) dt[s] = fsoftplus(delta[s] + bias);
  } else {
#pragma omp simd
    for (int64_t s = 0; s < l; ++s) dt[s] = delta[s] + bias;
  }
}

// a.dt holds the raw delta here: dt = softplus(delta + delta_bias) is formed per row in a scratch
// buffer, so the pass reads delta and u and writes y = C h once. (D u and the silu(z) gate stay in
// PyTorch, shared by every backend, so that all of them finish the output with the same arithmetic.)
template <typename T, int NS>
void forward(const Args<T> &a, const Extras<T> &x, T *y, T *last, int64_t threads) {
  const int64_t n = NS > 0 ? NS : a.nn, l = a.nl;
  parallel_pairs(a.nb * a.nd, threads, [&](int64_t, int64_t lo, int64_t hi) {
    std::vector<T> h(n), hb(n), dtrow(l);
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t bi = p / a.nd, di = p % a.nd;
      const T *delta = a.dt + p * l, *u = a.u + p * l, *A = a.A + di * n;
      T *dt = dtrow.data();
      const T bias = x.delta_bias ? x.delta_bias[di] : T(0);
      step_sizes(delta, bias, x.softplus, l, dt);
      const T *B = a.B + bi * a.lb.sb + (di / a.lb.hpg) * a.lb.sg;
      const T *C = a.C + bi * a.lc.sb + (di / a.lc.hpg) * a.lc.sg;
      T h0[NS > 0 ? NS : 1], h1[NS > 0 ? NS : 1];  // ping-pong state buffers (restrict-clean)
      T *hp = NS > 0 ? h0 : h.data(), *hq = NS > 0 ? h1 : hb.data();
      std::fill(hp, hp + n, T(0));
      T *yp = y + p * l;
      for (int64_t s = 0; s < l; ++s) {
        const T d = dt[s];
        yp[s] = step<T, NS>(n, d, d * u[s], A, B + s * a.lb.sl, C + s * a.lc.sl, hp, hq, (T *)nullptr);
        std::swap(hp, hq);
      }
      std::memcpy(last + p * n, hp, n * sizeof(T));
    }
  });
}

// ddelta, du: (b, d, l); dA: (threads, d, n); dB, dC: (threads, *storage of B / C), zero on entry.
// a.dt: the raw delta, as in the forward pass; ddelta is the gradient of delta (through softplus).
template <typename T, int NS>
void backward(const Args<T> &a, const Extras<T> &x, const T *dy, T *ddelta, T *du, T *dA, T *dB, T *dC,
              int64_t szB, int64_t szC, int64_t threads) {
  const int64_t n = NS > 0 ? NS : a.nn, l = a.nl;
  parallel_pairs(a.nb * a.nd, threads, [&](int64_t t, int64_t lo, int64_t hi) {
    std::vector<T> hs(l * n), as(l * n), g(n), gA(n), zero(n, T(0)), dtrow(l);
    T *dAt = dA + t * a.nd * n, *dBt = dB + t * szB, *dCt = dC + t * szC;
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t bi = p / a.nd, di = p % a.nd;
      const T *delta = a.dt + p * l, *u = a.u + p * l, *A = a.A + di * n, *gy = dy + p * l;
      const T bias = x.delta_bias ? x.delta_bias[di] : T(0);
      T *dt = dtrow.data(), *ddt = ddelta + p * l;
      step_sizes(delta, bias, x.softplus, l, dt);
      const int64_t ob = bi * a.lb.sb + (di / a.lb.hpg) * a.lb.sg;
      const int64_t oc = bi * a.lc.sb + (di / a.lc.hpg) * a.lc.sg;
      const T *B = a.B + ob, *C = a.C + oc;
      T *gB = dBt + ob, *gC = dCt + oc;
      // recompute decays and states
      const T *hprev = zero.data();
      for (int64_t s = 0; s < l; ++s) {
        const T d = dt[s];
        T *hcur = hs.data() + s * n;
        step<T, NS>(n, d, d * u[s], A, B + s * a.lb.sl, C + s * a.lc.sl, hprev, hcur, as.data() + s * n);
        hprev = hcur;
      }
      // adjoint scan
      std::fill(g.begin(), g.end(), T(0));
      std::fill(gA.begin(), gA.end(), T(0));
      T *gp = g.data(), *gAp = gA.data();
      for (int64_t s = l - 1; s >= 0; --s) {
        const T d = dt[s], us = u[s];
        const T *hp = s > 0 ? hs.data() + (s - 1) * n : zero.data();
        T sdt, sdtu;
        adjoint_step<T, NS>(n, d, d * us, gy[s], A, B + s * a.lb.sl, C + s * a.lc.sl, hs.data() + s * n, hp,
                            as.data() + s * n, gp, gAp, gB + s * a.lb.sl, gC + s * a.lc.sl, sdt, sdtu);
        ddt[s] = sdt + sdtu * us;
        du[p * l + s] = sdtu * d;
      }
      if (x.softplus) {  // d softplus(v) / dv = sigmoid(v)
#pragma omp simd
        for (int64_t s = 0; s < l; ++s) ddt[s] /= T(1) + fexp(-(delta[s] + bias));
      }
      for (int64_t k = 0; k < n; ++k) dAt[di * n + k] += gAp[k];
    }
  });
}

template <typename T>
Args<T> make_args(const void *dt, const void *u, const void *A, const void *B, const void *C, int64_t nb,
                  int64_t nd, int64_t nl, int64_t nn, const int64_t *lb, const int64_t *lc) {
  return Args<T>{static_cast<const T *>(dt), static_cast<const T *>(u), static_cast<const T *>(A),
                 static_cast<const T *>(B),  static_cast<const T *>(C), nb, nd, nl, nn,
                 Layout{lb[0], lb[1], lb[2], lb[3]}, Layout{lc[0], lc[1], lc[2], lc[3]}};
}

template <typename T>
void forward_any(const Args<T> &a, const Extras<T> &x, T *y, T *last, int64_t threads) {
  switch (a.nn) {
    case 1: return forward<T, 1>(a, x, y, last, threads);
    case 4: return forward<T, 4>(a, x, y, last, threads);
    case 8: return forward<T, 8>(a, x, y, last, threads);
    case 16: return forward<T, 16>(a, x, y, last, threads);
    case 32: return forward<T, 32>(a, x, y, last, threads);
    default: return forward<T, 0>(a, x, y, last, threads);
  }
}

template <typename T>
void backward_any(const Args<T> &a, const Extras<T> &x, const T *dy, T *ddt, T *du, T *dA, T *dB, T *dC,
                  int64_t szB, int64_t szC, int64_t threads) {
  switch (a.nn) {
    case 1: return backward<T, 1>(a, x, dy, ddt, du, dA, dB, dC, szB, szC, threads);
    case 4: return backward<T, 4>(a, x, dy, ddt, du, dA, dB, dC, szB, szC, threads);
    case 8: return backward<T, 8>(a, x, dy, ddt, du, dA, dB, dC, szB, szC, threads);
    case 16: return backward<T, 16>(a, x, dy, ddt, du, dA, dB, dC, szB, szC, threads);
    case 32: return backward<T, 32>(a, x, dy, ddt, du, dA, dB, dC, szB, szC, threads);
    default: return backward<T, 0>(a, x, dy, ddt, du, dA, dB, dC, szB, szC, threads);
  }
}

}  // namespace

extern "C" {

int papers_scan_abi_version() { return 5; }

// dtype: 0 float32, 1 float64. lb / lc: {batch stride, group stride, channels per group, position stride}.
// Forward: delta is the raw step (delta_bias, which may be null, and softplus applied inside); y = C h.
void papers_scan_fwd(int dtype, const void *delta, const void *u, const void *A, const void *B, const void *C,
                     int64_t nb, int64_t nd, int64_t nl, int64_t nn, const int64_t *lb, const int64_t *lc,
                     const void *delta_bias, int softplus, void *y, void *last, int64_t threads) {
  if (dtype == 0)
    forward_any(make_args<float>(delta, u, A, B, C, nb, nd, nl, nn, lb, lc),
                Extras<float>{static_cast<const float *>(delta_bias), softplus}, static_cast<float *>(y),
                static_cast<float *>(last), threads);
  else
    forward_any(make_args<double>(delta, u, A, B, C, nb, nd, nl, nn, lb, lc),
                Extras<double>{static_cast<const double *>(delta_bias), softplus}, static_cast<double *>(y),
                static_cast<double *>(last), threads);
}

// Backward of y = C h: delta, delta_bias and softplus as in the forward pass; dy the gradient of y;
// writes the gradients of delta (through bias and softplus), u, A, B and C.
void papers_scan_bwd(int dtype, const void *delta, const void *u, const void *A, const void *B, const void *C,
                     int64_t nb, int64_t nd, int64_t nl, int64_t nn, const int64_t *lb, const int64_t *lc,
                     const void *delta_bias, int softplus, const void *dy, void *ddelta, void *du, void *dA,
                     void *dB, void *dC, int64_t szB, int64_t szC, int64_t threads) {
  if (dtype == 0)
    backward_any(make_args<float>(delta, u, A, B, C, nb, nd, nl, nn, lb, lc),
                 Extras<float>{static_cast<const float *>(delta_bias), softplus}, static_cast<const float *>(dy),
                 static_cast<float *>(ddelta), static_cast<float *>(du), static_cast<float *>(dA),
                 static_cast<float *>(dB), static_cast<float *>(dC), szB, szC, threads);
  else
    backward_any(make_args<double>(delta, u, A, B, C, nb, nd, nl, nn, lb, lc),
                 Extras<double>{static_cast<const double *>(delta_bias), softplus},
                 static_cast<const double *>(dy), static_cast<double *>(ddelta), static_cast<double *>(du),
                 static_cast<double *>(dA), static_cast<double *>(dB), static_cast<double *>(dC), szB, szC,
                 threads);
}
}
