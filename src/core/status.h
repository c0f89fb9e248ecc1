// Status / Result<T>: recoverable errors (files, configs, requests) travel as values with a
// message that names what was wrong and what was expected. Programming errors use NB_CHECK.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace nb {

enum class ErrorCode { kOk = 0, kInvalidArgument, kNotFound, kIo, kFormat, kUnsupported, kOutOfRange, kInternal, kUnavailable };

const char* error_code_name(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return Status(); }

  bool is_ok() const { return code_ == ErrorCode::kOk; }
  explicit operator bool() const { return is_ok(); }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "format error: model.safetensors: tensor 'x': expected ..., got ..."
  std::string to_string() const;
  // Prepends context ("while loading adapter 'kjv': ") to the message.
  Status with_context(const std::string& context) const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

// printf-style string building; used for error messages everywhere.
std::string strformat(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

inline Status invalid_argument(std::string m) { return {ErrorCode::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {ErrorCode::kNotFound, std::move(m)}; }
inline Status io_error(std::string m) { return {ErrorCode::kIo, std::move(m)}; }
inline Status format_error(std::string m) { return {ErrorCode::kFormat, std::move(m)}; }
inline Status unsupported(std::string m) { return {ErrorCode::kUnsupported, std::move(m)}; }
inline Status out_of_range(std::string m) { return {ErrorCode::kOutOfRange, std::move(m)}; }
inline Status internal_error(std::string m) { return {ErrorCode::kInternal, std::move(m)}; }
// A service that cannot take the request now (shutting down); the request itself may be fine.
inline Status unavailable(std::string m) { return {ErrorCode::kUnavailable, std::move(m)}; }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT
    if (status_.is_ok()) status_ = internal_error("Result constructed from an OK status without a value");
  }
  bool is_ok() const { return value_.has_value(); }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

[[noreturn]] void check_failed(const char* file, int line, const char* expr, const std::string& msg);

}  // namespace nb

// Propagate a failed Status / Result.
#define NB_RETURN_IF_ERROR(expr)              \
  do {                                        \
    ::nb::Status nb_status_ = (expr);         \
    if (!nb_status_.is_ok()) return nb_status_; \
  } while (0)

#define NB_CONCAT_INNER(a, b) a##b
#define NB_CONCAT(a, b) NB_CONCAT_INNER(a, b)
#define NB_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.is_ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
// NB_ASSIGN_OR_RETURN(auto x, f());
#define NB_ASSIGN_OR_RETURN(lhs, expr) NB_ASSIGN_OR_RETURN_IMPL(NB_CONCAT(nb_result_, __LINE__), lhs, expr)

// Programming errors: abort with file and line.
#define NB_CHECK(cond, ...)                                                              \
  do {                                                                                   \
    if (!(cond)) ::nb::check_failed(__FILE__, __LINE__, #cond, ::nb::strformat("" __VA_ARGS__)); \
  } while (0)
