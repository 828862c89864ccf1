// libtorch's automatic mixed precision (torch.autocast) switched on and off
// for the calling thread, on the CPU or CUDA: tch 0.24 only reaches the
// CUDA switch, without its dtype. Compiled by train/build.rs against the
// headers of the libtorch that tch links; used by src/amp.rs.

#include <ATen/autocast_mode.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

}  // namespace

extern "C" {

// Enables autocast on the device type with `dtype` (a c10::ScalarType) for
// this thread; `*was_enabled` and `*was_dtype` get what to restore with
// rayforge_train_autocast_exit. Returns null, or an error the caller frees
// with rayforge_train_rng_free_error.
char* rayforge_train_autocast_enter(int cuda, int dtype, int* was_enabled, int* was_dtype) {
  try {
    auto type = device_type(cuda);
    *was_enabled = at::autocast::is_autocast_enabled(type) ? 1 : 0;
    *was_dtype = static_cast<int>(at::autocast::get_autocast_dtype(type));
    at::autocast::set_autocast_dtype(type, static_cast<at::ScalarType>(dtype));
    at::autocast::set_autocast_enabled(type, true);
    at::autocast::increment_nesting();
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// Leaves the region rayforge_train_autocast_enter opened: the casts it
// cached are dropped when the outermost region ends, and the device's
// autocast state is what it was before.
char* rayforge_train_autocast_exit(int cuda, int was_enabled, int was_dtype) {
  try {
    auto type = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(type, was_enabled != 0);
    at::autocast::set_autocast_dtype(type, static_cast<at::ScalarType>(was_dtype));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

}  // extern "C"
