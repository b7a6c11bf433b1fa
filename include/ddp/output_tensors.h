// Collecting the tensors of a forward's result, whatever its shape (a Tensor, vectors,
// tuples, pairs, maps, optionals, IValues, nested), so the reducer can find the
// autograd graph's roots. Handles only: no tensor data is copied.
//
// A trainer whose forward returns its own struct adds an overload in the struct's
// namespace, found by argument-dependent lookup:
//   void collect_tensors(const MyOutput& o, std::vector<at::Tensor>& out) {
//     ddp::collect_tensors(o.logits, out); ddp::collect_tensors(o.aux, out);
//   }
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <torch/ordered_dict.h>

#include <array>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ddp {

inline void collect_tensors(const at::Tensor& tensor, std::vector<at::Tensor>& out) {
  if (tensor.defined()) {
    out.push_back(tensor);
  }
}

inline void collect_tensors(const c10::IValue& value, std::vector<at::Tensor>& out) {
  value.visit([&out](const c10::IValue& v) {
    if (v.isTensor()) {
      collect_tensors(v.toTensor(), out);
    }
    return false; // keep visiting nested containers
  });
}

template <typename T>
void collect_tensors(const std::vector<T>& values, std::vector<at::Tensor>& out);
template <typename T, size_t N>
void collect_tensors(const std::array<T, N>& values, std::vector<at::Tensor>& out);
template <typename... Ts>
void collect_tensors(const std::tuple<Ts...>& values, std::vector<at::Tensor>& out);
template <typename A, typename B>
void collect_tensors(const std::pair<A, B>& value, std::vector<at::Tensor>& out);
template <typename K, typename V, typename... Rest>
void collect_tensors(const std::map<K, V, Rest...>& values, std::vector<at::Tensor>& out);
template <typename K, typename V, typename... Rest>
void collect_tensors(const std::unordered_map<K, V, Rest...>& values, std::vector<at::Tensor>& out);
template <typename K, typename V>
void collect_tensors(const torch::OrderedDict<K, V>& values, std::vector<at::Tensor>& out);
template <typename T>
void collect_tensors(const std::optional<T>& value, std::vector<at::Tensor>& out);

// Scalars and strings hold no tensors. Any other type must have its own overload:
// ignoring it silently would hide outputs from the graph walk.
template <typename T>
std::enable_if_t<std::is_arithmetic_v<T> || std::is_enum_v<T> || std::is_same_v<T, std::string>>
collect_tensors(const T&, std::vector<at::Tensor>&) {}

template <typename T>
void collect_tensors(const std::vector<T>& values, std::vector<at::Tensor>& out) {
  for (const auto& v : values) collect_tensors(v, out);
}
template <typename T, size_t N>
void collect_tensors(const std::array<T, N>& values, std::vector<at::Tensor>& out) {
  for (const auto& v : values) collect_tensors(v, out);
}
template <typename... Ts>
void collect_tensors(const std::tuple<Ts...>& values, std::vector<at::Tensor>& out) {
  std::apply([&out](const auto&... v) { (collect_tensors(v, out), ...); }, values);
}
template <typename A, typename B>
void collect_tensors(const std::pair<A, B>& value, std::vector<at::Tensor>& out) {
  collect_tensors(value.first, out);
  collect_tensors(value.second, out);
}
template <typename K, typename V, typename... Rest>
void collect_tensors(const std::map<K, V, Rest...>& values, std::vector<at::Tensor>& out) {
  for (const auto& kv : values) collect_tensors(kv.second, out);
}
template <typename K, typename V, typename... Rest>
void collect_tensors(const std::unordered_map<K, V, Rest...>& values, std::vector<at::Tensor>& out) {
  for (const auto& kv : values) collect_tensors(kv.second, out);
}
template <typename K, typename V>
void collect_tensors(const torch::OrderedDict<K, V>& values, std::vector<at::Tensor>& out) {
  for (const auto& item : values) collect_tensors(item.value(), out);
}
template <typename T>
void collect_tensors(const std::optional<T>& value, std::vector<at::Tensor>& out) {
  if (value) collect_tensors(*value, out);
}

// Entry point: the tensors of any supported output value.
template <typename T>
std::vector<at::Tensor> output_tensors(const T& value) {
  std::vector<at::Tensor> out;
  collect_tensors(value, out);
  return out;
}

} // namespace ddp
