// Standalone test of the fused RBF CPU kernels against a straightforward double loop.
//
//   g++ -O1 -g -std=c++17 -fopenmp -Wno-psabi -fsanitize=address,undefined -fno-sanitize-recover=undefined
//       -Icsrc csrc/tests/test_rbf_cpp.cpp csrc/cpu/rbf.cpp csrc/cpu/isa.cpp -o /tmp/test_rbf_cpp && /tmp/test_rbf_cpp
//
// Covers every metric form (none, diag, diag shared, tril, tril shared), every activation, float
// and double, odd sizes, null outputs, N = 0 / C = 0, each instruction-set clone the CPU has, and
// bitwise equality of nthreads = 1 and 2. Exit status 0 when everything passes.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "cpu/rbf.h"

using rbfkern::cpu::RbfProblem;

namespace {

int g_failures = 0;
int g_checks = 0;

struct Case {
  int64_t N, C, D;
  int metric_kind;
  bool shared;
  int kind;
};

int64_t metric_size(const Case& k) {
  if (k.metric_kind == 1) return k.shared ? k.D : k.C * k.D;
  if (k.metric_kind == 2) return k.shared ? k.D * k.D : k.C * k.D * k.D;
  return 0;
}

// Reference in double: r2, f, and all gradients for given upstream grads.
struct Ref {
  std::vector<double> r2, act, gx, gc, gm, gs;
};

void act_ref(int kind, double r2, double s, double a, double& f, double& dfdr2, double& dfds) {
  const double s2 = s * s, s3 = s2 * s;
  f = dfdr2 = dfds = 0.0;
  switch (kind) {
    case 0:
      f = std::sqrt(r2);
      dfdr2 = r2 > 0 ? 0.5 / f : 0.0;
      break;
    case 1:
      f = std::exp(-r2 / (2 * s2));
      dfdr2 = -f / (2 * s2);
      dfds = f * r2 / s3;
      break;
    case 2:
      f = r2 > 0 ? 0.5 * r2 * std::log(r2) : 0.0;
      dfdr2 = r2 > 0 ? 0.5 * (std::log(r2) + 1.0) : 0.0;
      break;
    case 3: {
      const double z = (r2 - a * a) / s2;
      f = 1.0 / (1.0 + std::exp(z));
      dfdr2 = -f * (1 - f) / s2;
      dfds = f * (1 - f) * 2 * (r2 - a * a) / s3;
      break;
    }
    case 4:
      f = std::pow(r2 + s2, -a);
      dfdr2 = -a * std::pow(r2 + s2, -a - 1);
      dfds = dfdr2 * 2 * s;
      break;
    case 5:
      f = std::pow(r2 + s2, a);
      dfdr2 = a * std::pow(r2 + s2, a - 1);
      dfds = dfdr2 * 2 * s;
      break;
    case 6:
      f = 1.0 / (1.0 + r2 / s2);
      dfdr2 = -f * f / s2;
      dfds = f * f * 2 * r2 / s3;
      break;
    case 7:
      f = 1.0 - r2 / s2;
      dfdr2 = -1.0 / s2;
      dfds = 2 * r2 / s3;
      break;
    default: break;
  }
}

template <class T>
Ref reference(const Case& k, const std::vector<T>& x, const std::vector<T>& c, const std::vector<T>& m,
              const std::vector<T>& sig, double a, const std::vector<T>& ga, const std::vector<T>& gr) {
  const int64_t N = k.N, C = k.C, D = k.D;
  Ref R;
  R.r2.assign(N * C, 0);
  R.act.assign(N * C, 0);
  R.gx.assign(N * D, 0);
  R.gc.assign(C * D, 0);
  R.gm.assign(metric_size(k), 0);
  R.gs.assign(C, 0);
  std::vector<double> diff(D), u(D), dr2dd(D);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < C; ++j) {
      for (int64_t d = 0; d < D; ++d) diff[d] = (double)x[n * D + d] - (double)c[j * D + d];
      double r2 = 0;
      const T* W = k.metric_kind ? m.data() + (k.shared ? 0 : (k.metric_kind == 1 ? j * D : j * D * D)) : nullptr;
      if (k.metric_kind == 0) {
        for (int64_t d = 0; d < D; ++d) r2 += diff[d] * diff[d], dr2dd[d] = 2 * diff[d];
      } else if (k.metric_kind == 1) {
        for (int64_t d = 0; d < D; ++d) r2 += W[d] * diff[d] * diff[d], dr2dd[d] = 2 * W[d] * diff[d];
      } else {
        for (int64_t kk = 0; kk < D; ++kk) {
          u[kk] = 0;
          for (int64_t d = kk; d < D; ++d) u[kk] += diff[d] * W[d * D + kk];
          r2 += u[kk] * u[kk];
        }
        for (int64_t d = 0; d < D; ++d) {
          dr2dd[d] = 0;
          for (int64_t kk = 0; kk <= d; ++kk) dr2dd[d] += 2 * W[d * D + kk] * u[kk];
        }
      }
      double f = 0, dfdr2 = 0, dfds = 0;
      act_ref(k.kind, r2, k.kind >= 0 ? (double)sig[j] : 1.0, a, f, dfdr2, dfds);
      R.r2[n * C + j] = r2;
      R.act[n * C + j] = f;
      const double gav = k.kind >= 0 ? (double)ga[n * C + j] : 0.0;
      const double G = gav * dfdr2 + (double)gr[n * C + j];
      R.gs[j] += gav * dfds;
      for (int64_t d = 0; d < D; ++d) {
        R.gx[n * D + d] += G * dr2dd[d];
        R.gc[j * D + d] -= G * dr2dd[d];
      }
      if (k.metric_kind == 1) {
        double* gw = R.gm.data() + (k.shared ? 0 : j * D);
        for (int64_t d = 0; d < D; ++d) gw[d] += G * diff[d] * diff[d];
      } else if (k.metric_kind == 2) {
        double* gL = R.gm.data() + (k.shared ? 0 : j * D * D);
        for (int64_t d = 0; d < D; ++d)
          for (int64_t kk = 0; kk <= d; ++kk) gL[d * D + kk] += 2 * G * diff[d] * u[kk];
      }
    }
  return R;
}

template <class T>
void compare(const char* what, const Case& k, const std::vector<T>& got, const std::vector<double>& want,
             const char* isa) {
  ++g_checks;
  double scale = 0, err = 0;
  bool finite = true;
  for (size_t i = 0; i < want.size(); ++i) scale = std::max(scale, std::fabs(want[i]));
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite((double)got[i])) finite = false;
    err = std::max(err, std::fabs((double)got[i] - want[i]));
  }
  const double tol = (sizeof(T) == 4 ? 2e-5 : 1e-12) * std::max(1.0, std::sqrt((double)k.D)) * (scale + 1e-30) +
                     (sizeof(T) == 4 ? 1e-30 : 1e-300);
  if (!finite || err > tol) {
    ++g_failures;
    std::printf("FAIL %-6s %s N=%lld C=%lld D=%lld metric=%d shared=%d kind=%d isa=%s: max err %.3g (scale %.3g)%s\n",
                sizeof(T) == 4 ? "float" : "double", what, (long long)k.N, (long long)k.C, (long long)k.D,
                k.metric_kind, (int)k.shared, k.kind, isa, err, scale, finite ? "" : " NON-FINITE");
  }
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), sizeof(T) * a.size()) == 0);
}

template <class T>
void run_case(const Case& k, std::mt19937& rng, const char* isa) {
  const int64_t N = k.N, C = k.C, D = k.D;
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> ud(0.3, 1.5);
  std::vector<T> x(N * D), c(C * D), m(metric_size(k)), sig(C), ga(N * C), gr(N * C);
  for (auto& v : x) v = (T)nd(rng);
  for (auto& v : c) v = (T)nd(rng);
  if (N > 0 && C > 0)
    for (int64_t d = 0; d < D; ++d) x[d] = c[d];  // x exactly on a centre
  if (k.metric_kind == 1)
    for (auto& v : m) v = (T)ud(rng);
  if (k.metric_kind == 2) {
    for (auto& v : m) v = (T)(0.3 * nd(rng));
    const int64_t nm = k.shared ? 1 : C;
    for (int64_t j = 0; j < nm; ++j)
      for (int64_t d = 0; d < D; ++d) m[j * D * D + d * D + d] += (T)1;
  }
  for (auto& v : sig) v = (T)(ud(rng) * std::sqrt((double)D + 1.0));
  for (auto& v : ga) v = (T)nd(rng);
  for (auto& v : gr) v = (T)nd(rng);
  const double a = 0.7;

  RbfProblem<T> p;
  p.N = N;
  p.C = C;
  p.D = D;
  p.x = x.data();
  p.centers = c.data();
  p.metric = k.metric_kind ? m.data() : nullptr;
  p.metric_kind = k.metric_kind;
  p.metric_shared = k.shared;
  p.sigma = sig.data();
  p.kind = k.kind;
  p.shape = a;

  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> r2(N * C, nan), act(N * C, nan);
  rbfkern::cpu::rbf_forward<T>(p, k.kind >= 0 ? act.data() : nullptr, r2.data(), 2);
  const Ref R = reference<T>(k, x, c, m, sig, a, ga, gr);
  compare("r2", k, r2, R.r2, isa);
  if (k.kind >= 0) compare("act", k, act, R.act, isa);

  std::vector<T> gx(N * D, nan), gc(C * D, nan), gm(metric_size(k), nan), gs(C, nan);
  const T* gap = k.kind >= 0 ? ga.data() : nullptr;
  rbfkern::cpu::rbf_backward<T>(p, r2.data(), gap, gr.data(), gx.data(), gc.data(),
                                k.metric_kind ? gm.data() : nullptr, gs.data(), 2);
  compare("gx", k, gx, R.gx, isa);
  compare("gc", k, gc, R.gc, isa);
  if (k.metric_kind) compare("gmetric", k, gm, R.gm, isa);
  compare("gsigma", k, gs, R.gs, isa);

  // Determinism: nthreads = 1 must give the same bits; null outputs must not disturb others.
  std::vector<T> r2b(N * C), actb(N * C), gxb(N * D, nan), gcb(C * D, nan);
  rbfkern::cpu::rbf_forward<T>(p, k.kind >= 0 ? actb.data() : nullptr, r2b.data(), 1);
  rbfkern::cpu::rbf_backward<T>(p, r2.data(), gap, gr.data(), gxb.data(), nullptr, nullptr, nullptr, 1);
  rbfkern::cpu::rbf_backward<T>(p, r2.data(), gap, gr.data(), nullptr, gcb.data(), nullptr, nullptr, 1);
  ++g_checks;
  bool same = same_bits(r2b, r2) && same_bits(gxb, gx) && same_bits(gcb, gc);
  if (k.kind >= 0) same = same && same_bits(actb, act);
  if (!same) {
    ++g_failures;
    std::printf("FAIL %-6s determinism N=%lld C=%lld D=%lld metric=%d shared=%d kind=%d isa=%s\n",
                sizeof(T) == 4 ? "float" : "double", (long long)N, (long long)C, (long long)D, k.metric_kind,
                (int)k.shared, k.kind, isa);
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const int64_t Ds[] = {1, 3, 33, 130};
  // {20, 300}: more centres than one group of the tril backward (kTrilGroupMax)
  const int64_t NCs[][2] = {{1, 1}, {5, 7}, {7, 5}, {64, 64}, {0, 5}, {5, 0}, {70, 37}, {20, 300}};
  const struct {
    int mk;
    bool shared;
  } metrics[] = {{0, false}, {1, false}, {1, true}, {2, false}, {2, true}};
  const char* isas[] = {"avx512", "avx2", "default"};
  for (const char* isa : isas) {
    rbfkern::cpu::recap_cpu_isa(isa);
    if (std::string(rbfkern::cpu::cpu_isa_name()) != isa) {
      std::printf("skip isa %s (cpu lacks it)\n", isa);
      continue;
    }
    for (const int64_t D : Ds)
      for (const auto& nc : NCs)
        for (const auto& mt : metrics)
          for (int kind = -1; kind <= 7; ++kind) {
            // keep the O(N C D^2) reference affordable under sanitizers
            if (mt.mk == 2 && D == 130 && nc[0] * nc[1] > 64) continue;
            const bool big = nc[0] * nc[1] > 1000;
            if (big && kind != 1 && kind != 0 && kind != 3) continue;
            const Case k{nc[0], nc[1], D, mt.mk, mt.shared, kind};
            run_case<float>(k, rng, isa);
            run_case<double>(k, rng, isa);
          }
  }
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
