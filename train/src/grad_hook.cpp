// A hook on a parameter that runs once its gradient for the current
// backward is accumulated (torch's register_post_accumulate_grad_hook),
// which tch 0.24 does not reach: DistributedModel uses it to hand a bucket
// of gradients to the all-reduce while backward is still running, as DDP
// does. Compiled by train/build.rs against the headers of the libtorch
// that tch links; used by src/overlap.rs.

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>

namespace {

using Ready = void (*)(const void* ctx, size_t index);
using Release = void (*)(const void* ctx);

// Calls `ready(ctx, index)` after each accumulation into the parameter's
// gradient; releases `ctx` when the hook is dropped (the tensor freed, or
// the hook replaced by another).
struct Hook final : torch::autograd::PostAccumulateGradHook {
  Hook(Ready ready, Release release, const void* ctx, size_t index)
      : ready_(ready), release_(release), ctx_(ctx), index_(index) {}
  ~Hook() override { release_(ctx_); }
  Hook(const Hook&) = delete;
  Hook& operator=(const Hook&) = delete;

  void operator()(const torch::autograd::Variable& /*tensor*/) override { ready_(ctx_, index_); }

 private:
  Ready ready_;
  Release release_;
  const void* ctx_;
  size_t index_;
};

}  // namespace

extern "C" {

// Sets the post-accumulate-grad hook of `tensor` (a tch tensor: a pointer
// to an at::Tensor), a leaf that requires grad, replacing any earlier one.
// `release(ctx)` is called exactly once: when the hook is dropped, or
// before this returns an error. Returns null, or an error the caller frees
// with rayforge_train_rng_free_error.
char* rayforge_train_set_grad_hook(const at::Tensor* tensor, Ready ready, Release release, const void* ctx,
                                   size_t index) {
  std::unique_ptr<Hook> hook;
  try {
    hook = std::make_unique<Hook>(ready, release, ctx, index);
  } catch (const std::bad_alloc&) {
    release(ctx);
    return strdup("out of memory for a gradient hook");
  }
  try {
    if (!tensor->requires_grad() || !tensor->is_leaf()) {
      return strdup("a gradient hook goes on a leaf tensor that requires grad");
    }
    torch::autograd::impl::set_post_acc_grad_hooks(*tensor, std::move(hook));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

}  // extern "C"
