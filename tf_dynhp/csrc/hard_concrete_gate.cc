// Fused CPU kernels for per-example hard-concrete input gates (Louizos et al. 2018; DynHP Eq. 2-6).
//
// The TensorFlow-op composition of one gated layer's training step makes about twenty passes over
// (batch, gates) floats (uniform noise, its logit, the sigmoid, stretch, clip, product, open
// indicator, and as many in the backward pass). These two kernels do the same work in one pass each:
//
//   TfDynhpHardConcreteGate(x, log_alpha, key) -> (gated, z, open_count)
//     u_ij  = counter-based uniform noise from `key` and the element index (below)
//     s_ij  = sigmoid((log(u/(1-u)) + log_alpha_j) / T) = 1 / (1 + ((1-u)/u)^(1/T) exp(-log_alpha_j/T))
//     z_ij  = min(1, max(0, s_ij (limit_r - limit_l) + limit_l))        (Eq. 2 with the stretch)
//     gated = x * z,  open_count_j = #{i : z_ij > 0}                    (the counts of Eq. 6)
//
//   TfDynhpHardConcreteGateGrad(x, z, upstream) -> d_log_alpha
//     d_log_alpha_j = (r - l) / T * sum_i upstream_ij x_ij s_ij (1 - s_ij) [0 < z_ij < 1],
//     with s recovered from z (s = (z - l) / (r - l) where the clip did not act): no transcendental.
//
// Noise: for key (k0, k1) (a Keras SeedGenerator state) the stream key is
// K = splitmix64(splitmix64(k0) + k1); element (i, j) of a (B, W) call takes counter c = i * W + j
// (32 bits) and h = lowbias32(lowbias32(c ^ K_lo) + K_hi); u = (2 (h >> 9) + 1) / 2^24, an odd
// multiple of 2^-24 in (0, 1), exact in float32 (as is 1 - u). `tf_dynhp/fused.py` holds the NumPy
// reference of the same bits, tested in tests/test_fused.py. Work is split by column blocks, each
// column summed in row order by one thread: results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tf_dynhp {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline uint32_t LowBias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Per-element hard-concrete sample for the odd numerator `num` of u = num / 2^24 and
// c = exp(-log_alpha / T): s = 1 / (1 + ((1 - u) / u)^(1/T) c), then the stretch and clip.
template <bool kThreeHalves>
inline float GateValue(uint32_t h, float c, float inv_t, float l, float scale) {
  const float num = static_cast<float>(static_cast<int32_t>(2u * (h >> 9) + 1u));  // < 2^24: exact
  const float r = (16777216.f - num) / num;                                             // (1 - u) / u
  const float p = kThreeHalves ? r * std::sqrt(r) : std::pow(r, inv_t);  // T = 2/3: r^1.5 without pow
  const float s = 1.f / (1.f + p * c);
  return std::min(1.f, std::max(0.f, s * scale + l));
}

template <bool kThreeHalves>
void GateRowsImpl(const float* __restrict x, const float* __restrict c, float* __restrict gated, float* __restrict z,
                  float* __restrict count, int64_t batch, int64_t stride, int64_t n, uint32_t first_column,
                  uint32_t key_lo, uint32_t key_hi, float inv_t, float l, float scale) {
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t off = i * stride;
    const uint32_t base = static_cast<uint32_t>(i * stride) + first_column;
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t h = LowBias32(LowBias32((base + static_cast<uint32_t>(j)) ^ key_lo) + key_hi);
      const float zv = GateValue<kThreeHalves>(h, c[j], inv_t, l, scale);
      z[off + j] = zv;
      gated[off + j] = x[off + j] * zv;
      count[j] += zv > 0.f ? 1.f : 0.f;
    }
  }
}

// The columns [first_column, first_column + n) of a (batch, stride) call; pointers start at that column.
void GateRows(const float* x, const float* log_alpha, float* gated, float* z, float* count, int64_t batch,
              int64_t stride, int64_t n, uint32_t first_column, uint32_t key_lo, uint32_t key_hi, float inv_t,
              float l, float scale) {
  std::vector<float> c(n);
  for (int64_t j = 0; j < n; ++j) c[j] = std::exp(-log_alpha[j] * inv_t);
  std::fill(count, count + n, 0.f);
  if (inv_t == 1.5f) {
    GateRowsImpl<true>(x, c.data(), gated, z, count, batch, stride, n, first_column, key_lo, key_hi, inv_t, l, scale);
  } else {
    GateRowsImpl<false>(x, c.data(), gated, z, count, batch, stride, n, first_column, key_lo, key_hi, inv_t, l, scale);
  }
}

void GateGradRows(const float* __restrict x, const float* __restrict z, const float* __restrict up,
                  float* __restrict out, int64_t batch, int64_t stride, int64_t n, float l, float inv_scale,
                  float factor) {
  std::fill(out, out + n, 0.f);
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t off = i * stride;
    for (int64_t j = 0; j < n; ++j) {
      const float zv = z[off + j];
      const float s = (zv - l) * inv_scale;
      out[j] += (zv > 0.f && zv < 1.f) ? up[off + j] * x[off + j] * (s - s * s) : 0.f;
    }
  }
  for (int64_t j = 0; j < n; ++j) out[j] *= factor;
}

struct GateAttrs {
  float temperature, limit_l, limit_r;
  void Read(OpKernelConstruction* ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("temperature", &temperature));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("limit_l", &limit_l));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("limit_r", &limit_r));
    OP_REQUIRES(ctx, temperature > 0.f && limit_l < 0.f && limit_r > 1.f,
                absl::InvalidArgumentError(absl::StrCat(
                    "Expected temperature > 0, limit_l < 0 and limit_r > 1. Received: temperature=",
                    temperature, ", limit_l=", limit_l, ", limit_r=", limit_r)));
  }
};

// Shards columns [0, width) over the CPU worker threads; `per_column_cost` ~ cycles per column.
template <typename Fn>
void ShardColumns(OpKernelContext* ctx, int64_t width, int64_t per_column_cost, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, width, per_column_cost, fn);
}

// What both kernels share: the gate attributes, read and checked once at construction.
class GateOpKernel : public OpKernel {
 public:
  explicit GateOpKernel(OpKernelConstruction* ctx) : OpKernel(ctx) { attrs_.Read(ctx); }

 protected:
  GateAttrs attrs_;
};

class HardConcreteGateOp : public GateOpKernel {
 public:
  using GateOpKernel::GateOpKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& log_alpha = ctx->input(1);
    const Tensor& key = ctx->input(2);
    OP_REQUIRES(ctx, TensorShapeUtils::IsMatrix(x.shape()),
                absl::InvalidArgumentError(absl::StrCat("Expected x of rank 2 (batch, gates). Received shape ",
                                                        x.shape().DebugString())));
    const int64_t batch = x.dim_size(0), width = x.dim_size(1);
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(log_alpha.shape()) && log_alpha.dim_size(0) == width,
                absl::InvalidArgumentError(absl::StrCat("Expected log_alpha of shape (", width,
                                                        ",). Received shape ", log_alpha.shape().DebugString())));
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(key.shape()) && key.dim_size(0) == 2,
                absl::InvalidArgumentError(absl::StrCat("Expected key of shape (2,). Received shape ",
                                                        key.shape().DebugString())));
    OP_REQUIRES(ctx, batch * width < (int64_t{1} << 32),
                absl::InvalidArgumentError(absl::StrCat("Expected batch * gates < 2^32. Received ", batch, " * ",
                                                        width)));
    Tensor *gated = nullptr, *z_out = nullptr, *open = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &gated));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, x.shape(), &z_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({width}), &open));

    const auto k = key.flat<int64_t>();
    const uint64_t stream = SplitMix64(SplitMix64(static_cast<uint64_t>(k(0))) + static_cast<uint64_t>(k(1)));
    const uint32_t key_lo = static_cast<uint32_t>(stream), key_hi = static_cast<uint32_t>(stream >> 32);
    const float* xp = x.flat<float>().data();
    const float* la = log_alpha.flat<float>().data();
    float* gp = gated->flat<float>().data();
    float* zp = z_out->flat<float>().data();
    float* op = open->flat<float>().data();
    const float inv_t = 1.f / attrs_.temperature, l = attrs_.limit_l, scale = attrs_.limit_r - attrs_.limit_l;

    ShardColumns(ctx, width, batch * 40, [=](int64_t begin, int64_t end) {
      GateRows(xp + begin, la + begin, gp + begin, zp + begin, op + begin, batch, width, end - begin,
               static_cast<uint32_t>(begin), key_lo, key_hi, inv_t, l, scale);
    });
  }
};

class HardConcreteGateGradOp : public GateOpKernel {
 public:
  using GateOpKernel::GateOpKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& z = ctx->input(1);
    const Tensor& up = ctx->input(2);
    OP_REQUIRES(ctx, TensorShapeUtils::IsMatrix(x.shape()) && z.shape() == x.shape() && up.shape() == x.shape(),
                absl::InvalidArgumentError(absl::StrCat("Expected x, z and upstream of one rank-2 shape. Received ",
                                                        x.shape().DebugString(), ", ", z.shape().DebugString(), ", ",
                                                        up.shape().DebugString())));
    const int64_t batch = x.dim_size(0), width = x.dim_size(1);
    Tensor* d_la = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({width}), &d_la));
    const float* xp = x.flat<float>().data();
    const float* zp = z.flat<float>().data();
    const float* upp = up.flat<float>().data();
    float* out = d_la->flat<float>().data();
    const float l = attrs_.limit_l, scale = attrs_.limit_r - attrs_.limit_l;
    const float inv_scale = 1.f / scale, factor = scale / attrs_.temperature;

    ShardColumns(ctx, width, batch * 8, [=](int64_t begin, int64_t end) {
      GateGradRows(xp + begin, zp + begin, upp + begin, out + begin, batch, width, end - begin, l, inv_scale, factor);
    });
  }
};

REGISTER_OP("TfDynhpHardConcreteGate")
    .Input("x: float")
    .Input("log_alpha: float")
    .Input("key: int64")
    .Output("gated: float")
    .Output("z: float")
    .Output("open_count: float")
    .Attr("temperature: float")
    .Attr("limit_l: float")
    .Attr("limit_r: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      c->set_output(0, x);
      c->set_output(1, x);
      c->set_output(2, c->Vector(c->Dim(x, 1)));
      return absl::OkStatus();
    });

REGISTER_OP("TfDynhpHardConcreteGateGrad")
    .Input("x: float")
    .Input("z: float")
    .Input("upstream: float")
    .Output("d_log_alpha: float")
    .Attr("temperature: float")
    .Attr("limit_l: float")
    .Attr("limit_r: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      c->set_output(0, c->Vector(c->Dim(x, 1)));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("TfDynhpHardConcreteGate").Device(DEVICE_CPU), HardConcreteGateOp);
REGISTER_KERNEL_BUILDER(Name("TfDynhpHardConcreteGateGrad").Device(DEVICE_CPU), HardConcreteGateGradOp);

}  // namespace tf_dynhp
