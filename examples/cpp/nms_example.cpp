// Calls fastdet's NMS from C++ with no Python: the program links libtorch and libfastdet, whose
// static TORCH_LIBRARY registrations put fastdet::nms into the dispatcher when it is loaded, and
// looks the op up by name. Prints the keep list and exits non-zero if it is not the expected one.
//
//   nms_example [cpu|cuda]
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <cstring>
#include <iostream>
#include <vector>

namespace {

// Six hand-made boxes (x1, y1, x2, y2) and distinct scores. Boxes 0/1 and 2/3 overlap with
// IoU 81/119 = 0.68; 4 and 5 overlap nothing. At iou_threshold 0.5, by descending score:
// 3 (0.95) kept, 0 (0.90) kept, 1 (0.80) suppressed by 0, 2 (0.70) suppressed by 3,
// 5 (0.60) kept, 4 (0.50) kept.
const std::vector<float> kBoxes = {
    0, 0, 10, 10,    //
    1, 1, 11, 11,    //
    20, 20, 30, 30,  //
    21, 21, 31, 31,  //
    0, 20, 10, 30,   //
    50, 50, 60, 60,  //
};
const std::vector<float> kScores = {0.90f, 0.80f, 0.70f, 0.95f, 0.50f, 0.60f};

std::vector<int64_t> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

void print(const char* label, const std::vector<int64_t>& v) {
  std::cout << label << ":";
  for (int64_t i : v) std::cout << " " << i;
  std::cout << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  const bool cuda = argc > 1 && std::strcmp(argv[1], "cuda") == 0;
  try {
    // The op as registered by libfastdet: nms(Tensor boxes, Tensor scores, float iou_threshold,
    // int max_output=-1) -> Tensor (int64 indices, by descending score).
    auto nms = c10::Dispatcher::singleton()
                   .findSchemaOrThrow("fastdet::nms", "")
                   .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t)>();

    const auto device = cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
    const auto n = static_cast<int64_t>(kScores.size());
    const at::Tensor boxes = at::tensor(kBoxes, at::kFloat).view({n, 4}).to(device);
    const at::Tensor scores = at::tensor(kScores, at::kFloat).to(device);

    const std::vector<int64_t> keep = to_vector(nms.call(boxes, scores, 0.5, -1));
    const std::vector<int64_t> top2 = to_vector(nms.call(boxes, scores, 0.5, 2));
    print("keep", keep);
    print("keep max_output=2", top2);

    const std::vector<int64_t> expected = {3, 0, 5, 4};
    const std::vector<int64_t> expected_top2 = {3, 0};
    if (keep != expected || top2 != expected_top2) {
      print("FAIL: expected keep", expected);
      print("FAIL: expected keep max_output=2", expected_top2);
      return 1;
    }
    std::cout << "OK\n";
    return 0;
  } catch (const c10::Error& e) {
    std::cerr << "FAIL: " << e.what_without_backtrace() << "\n";
    return 2;
  }
}
