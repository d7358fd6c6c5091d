#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace deskfarm::kernel {

/// A place in a manifest or file.
struct Location {
  std::string file;
  std::uint32_t line = 0;
  std::uint32_t column = 0;
  /// "file:line:column", or just the file when the position is unknown.
  std::string str() const;
};

/// One user-facing problem: where, what is wrong, and what to do about it.
struct Diagnostic {
  Location where;
  std::string message;
  std::string hint;
  std::string str() const;
};

/// A manifest, plugin or configuration that cannot be used; carries every problem found, not just the first.
class ValidationError : public std::runtime_error {
 public:
  explicit ValidationError(std::vector<Diagnostic> diagnostics);
  const std::vector<Diagnostic>& diagnostics() const { return diagnostics_; }

 private:
  std::vector<Diagnostic> diagnostics_;
};

/// Collects diagnostics and throws them together.
class Diagnostics {
 public:
  void add(Location where, std::string message, std::string hint = {}) {
    items_.push_back({std::move(where), std::move(message), std::move(hint)});
  }
  bool empty() const { return items_.empty(); }
  std::size_t size() const { return items_.size(); }
  void throw_if_any() const {
    if (!items_.empty()) throw ValidationError(items_);
  }

 private:
  std::vector<Diagnostic> items_;
};

/// The closest of `choices` to `word` (edit distance ≤ 1/3 of its length), or empty.
std::string closest(std::string_view word, const std::vector<std::string>& choices);
/// " Did you mean 'x'?" or empty.
std::string did_you_mean(std::string_view word, const std::vector<std::string>& choices);
/// "a, b, c" (or "(none)").
std::string join(const std::vector<std::string>& items, std::string_view separator = ", ");

}  // namespace deskfarm::kernel
