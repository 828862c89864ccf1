// The state of libtorch's default random generators, read and written as
// bytes: tch 0.24 can seed a generator but not save or restore one, and a
// resumed run must draw the same numbers (dropout, noise, sampling) as one
// that was never stopped. Compiled by train/build.rs against the headers
// of the libtorch that tch links; used by src/rng.rs.

#include <ATen/Context.h>
#include <ATen/ops/empty.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>

namespace {

at::Device device_of(int cuda, int index) {
  return cuda ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)) : at::Device(at::kCPU);
}

char* error_of(const std::exception& e) { return strdup(e.what()); }

}  // namespace

extern "C" {

// Copies the state of the default generator of the device (CPU, or CUDA
// device `index`) into `buf` when it holds `cap` bytes or more; `*len` is
// the state's size either way. Returns null, or an error the caller frees
// with rayforge_train_rng_free_error.
char* rayforge_train_rng_get_state(int cuda, int index, unsigned char* buf, size_t cap, size_t* len) {
  try {
    auto gen = at::globalContext().defaultGenerator(device_of(cuda, index));
    at::Tensor state;
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      state = gen.get_state().contiguous();
    }
    *len = static_cast<size_t>(state.numel());
    if (*len <= cap && *len > 0) {
      std::memcpy(buf, state.data_ptr<uint8_t>(), *len);
    }
    return nullptr;
  } catch (const std::exception& e) {
    return error_of(e);
  }
}

// Sets the state of the device's default generator from `len` bytes read
// by rayforge_train_rng_get_state. Returns null, or an error (a state of
// the wrong size or kind is refused by libtorch).
char* rayforge_train_rng_set_state(int cuda, int index, const unsigned char* buf, size_t len) {
  try {
    at::Tensor state = at::empty({static_cast<int64_t>(len)}, at::TensorOptions().dtype(at::kByte));
    if (len > 0) {
      std::memcpy(state.data_ptr<uint8_t>(), buf, len);
    }
    auto gen = at::globalContext().defaultGenerator(device_of(cuda, index));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
    return nullptr;
  } catch (const std::exception& e) {
    return error_of(e);
  }
}

void rayforge_train_rng_free_error(char* error) { std::free(error); }

}  // extern "C"
