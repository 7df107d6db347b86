// LayerNorm over channels + adaLN modulation in one pass over a channels-last map (see ../norm_modulate.py).
//
//   y = (x - mean) * rstd * (1 + scale[n]) + shift[n]      per pixel, over its C channels
//
// x is the (N, H, W, C) view of a channels-last (N, C, H, W) map, so every pixel's channels are one contiguous
// row: the row's mean, variance and output are computed while it sits in L1, and the map is read once and
// written once (ATen runs the LayerNorm and the modulation as two passes). The backward pass recomputes the
// normalised row from x, mean and rstd instead of storing it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

namespace {

using Vec = at::vec::Vectorized<float>;

void check_inputs(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "norm_modulate expects a contiguous CPU float32 (N, H, W, C) tensor");
  const int64_t n = x.size(0), c = x.size(3);
  for (const auto& t : {shift, scale}) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == c && t.is_contiguous() &&
                    t.scalar_type() == at::kFloat && t.device().is_cpu(),
                "norm_modulate expects contiguous CPU float32 (N, C) shift and scale");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_modulate_forward(const at::Tensor& x, const at::Tensor& shift,
                                                                     const at::Tensor& scale, double eps) {
  check_inputs(x, shift, scale);
  const int64_t channels = x.size(3), pixels = x.size(1) * x.size(2), rows = x.size(0) * pixels;
  auto y = at::empty_like(x);
  auto mean = at::empty({rows}, x.options());
  auto rstd = at::empty({rows}, x.options());
  const float* x_data = x.data_ptr<float>();
  const float* shift_data = shift.data_ptr<float>();
  const float* scale_data = scale.data_ptr<float>();
  float* y_data = y.data_ptr<float>();
  float* mean_data = mean.data_ptr<float>();
  float* rstd_data = rstd.data_ptr<float>();
  const float inv_c = 1.0f / static_cast<float>(channels);
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = x_data + r * channels;
      const float* sh = shift_data + (r / pixels) * channels;
      const float* sc = scale_data + (r / pixels) * channels;
      float* out = y_data + r * channels;
      const float mu = at::vec::reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, row, channels) * inv_c;
      const float var = at::vec::map_reduce_all<float>(
                            [mu](Vec v) { Vec d = v - Vec(mu); return d * d; },
                            [](Vec& a, Vec& b) { return a + b; }, row, channels) * inv_c;
      const float rs = 1.0f / std::sqrt(var + static_cast<float>(eps));
      int64_t c = 0;
      for (; c + Vec::size() <= channels; c += Vec::size()) {
        Vec normed = (Vec::loadu(row + c) - Vec(mu)) * Vec(rs);
        at::vec::fmadd(normed, Vec::loadu(sc + c) + Vec(1.0f), Vec::loadu(sh + c)).store(out + c);
      }
      for (; c < channels; ++c) {
        out[c] = (row[c] - mu) * rs * (1.0f + sc[c]) + sh[c];
      }
      mean_data[r] = mu;
      rstd_data[r] = rs;
    }
  });
  return {y, mean, rstd};
}

// grad_x = rstd * (g - mean_c(g) - n * mean_c(g * n)) with g = grad_y * (1 + scale) and n the normalised row;
// grad_shift[n] = sum over the sample's pixels of grad_y, grad_scale[n] = the same sum of grad_y * n.
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_modulate_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                                      const at::Tensor& mean, const at::Tensor& rstd,
                                                                      const at::Tensor& scale) {
  check_inputs(x, scale, scale);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.is_contiguous() && grad_y.scalar_type() == at::kFloat,
              "norm_modulate_backward expects a contiguous float32 gradient shaped like x");
  const int64_t samples = x.size(0), channels = x.size(3), pixels = x.size(1) * x.size(2);
  const int64_t rows = samples * pixels;
  auto grad_x = at::empty_like(x);
  const int threads = at::get_num_threads();
  // per-thread partial sums of grad_shift and grad_scale, added up at the end (rows of one sample may be split
  // between threads)
  auto partial = at::zeros({threads, 2, samples, channels}, x.options());
  const float* gy = grad_y.data_ptr<float>();
  const float* x_data = x.data_ptr<float>();
  const float* mean_data = mean.data_ptr<float>();
  const float* rstd_data = rstd.data_ptr<float>();
  const float* scale_data = scale.data_ptr<float>();
  float* gx = grad_x.data_ptr<float>();
  float* partial_data = partial.data_ptr<float>();
  const float inv_c = 1.0f / static_cast<float>(channels);
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    float* acc_shift = partial_data + static_cast<int64_t>(at::get_thread_num()) * 2 * samples * channels;
    float* acc_scale = acc_shift + samples * channels;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t sample = r / pixels;
      const float* row = x_data + r * channels;
      const float* g_row = gy + r * channels;
      const float* sc = scale_data + sample * channels;
      float* dshift = acc_shift + sample * channels;
      float* dscale = acc_scale + sample * channels;
      float* out = gx + r * channels;
      const float mu = mean_data[r], rs = rstd_data[r];
      Vec sum_g(0.0f), sum_gn(0.0f);
      int64_t c = 0;
      for (; c + Vec::size() <= channels; c += Vec::size()) {
        Vec dy = Vec::loadu(g_row + c);
        Vec normed = (Vec::loadu(row + c) - Vec(mu)) * Vec(rs);
        Vec g = dy * (Vec::loadu(sc + c) + Vec(1.0f));
        sum_g = sum_g + g;
        sum_gn = at::vec::fmadd(g, normed, sum_gn);
        (Vec::loadu(dshift + c) + dy).store(dshift + c);
        at::vec::fmadd(dy, normed, Vec::loadu(dscale + c)).store(dscale + c);
      }
      float mean_g = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sum_g);
      float mean_gn = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, sum_gn);
      for (int64_t t = c; t < channels; ++t) {
        const float normed = (row[t] - mu) * rs;
        const float g = g_row[t] * (1.0f + sc[t]);
        mean_g += g;
        mean_gn += g * normed;
        dshift[t] += g_row[t];
        dscale[t] += g_row[t] * normed;
      }
      mean_g *= inv_c;
      mean_gn *= inv_c;
      c = 0;
      for (; c + Vec::size() <= channels; c += Vec::size()) {
        Vec normed = (Vec::loadu(row + c) - Vec(mu)) * Vec(rs);
        Vec g = Vec::loadu(g_row + c) * (Vec::loadu(sc + c) + Vec(1.0f));
        (Vec(rs) * (g - Vec(mean_g) - normed * Vec(mean_gn))).store(out + c);
      }
      for (; c < channels; ++c) {
        const float normed = (row[c] - mu) * rs;
        out[c] = rs * (g_row[c] * (1.0f + sc[c]) - mean_g - normed * mean_gn);
      }
    }
  });
  auto sums = partial.sum(0);
  return {grad_x, sums[0], sums[1]};
}

}  // namespace

TORCH_LIBRARY(convdiff, m) {
  m.def("norm_modulate(Tensor x, Tensor shift, Tensor scale, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("norm_modulate_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, Tensor scale) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(convdiff, CPU, m) {
  m.impl("norm_modulate", &norm_modulate_forward);
  m.impl("norm_modulate_backward", &norm_modulate_backward);
}
