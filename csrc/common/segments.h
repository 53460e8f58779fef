#pragma once
// Items grouped by an integer key, for the gather (deterministic) backwards: order is a stable
// argsort of the keys, so the items of one key keep their index order, and the items of key s are
// order[offsets[s] .. offsets[s + 1]). Keys outside [0, count) belong to no segment. Sorting and
// searching are deterministic on every device, so a gather that walks the segments in order sums
// in a fixed order.
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>

#include <cstdint>

namespace fastdet {

struct KeySegments {
  at::Tensor order, offsets;  // int64 [items], int64 [count + 1]
};

// keys: int64 [items] on any device -> the segments of keys 0 .. count - 1, on that device.
inline KeySegments segments_by_key(const at::Tensor& keys, int64_t count) {
  const auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  return {order, at::searchsorted(sorted, at::arange(count + 1, keys.options()))};
}

}  // namespace fastdet
