// Failure injection for the multi-process tests: an exception the tests throw on purpose
// (so that a libddp error is never swallowed by mistake), and an autograd function that
// passes its input through and throws it from its backward where armed.
#pragma once

#include <torch/csrc/autograd/custom_function.h>
#include <torch/torch.h>

#include <stdexcept>

namespace ddp::test {

struct Injected : std::runtime_error {
  Injected() : std::runtime_error("injected by the test") {}
};

struct ThrowInBackward : torch::autograd::Function<ThrowInBackward> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, bool armed) {
    ctx->saved_data["armed"] = armed;
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (ctx->saved_data["armed"].toBool()) throw Injected();
    return {grads[0], torch::Tensor()};
  }
};

} // namespace ddp::test
