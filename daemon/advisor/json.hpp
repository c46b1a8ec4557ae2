// A small strict JSON reader (RFC 8259) and string quoting for the advisor.
//
// Model output is untrusted input, so the reader rejects everything the RFC
// does not allow (comments, trailing commas, leading zeros, raw control
// characters, lone surrogates, invalid UTF-8, duplicate keys, trailing text) and bounds the
// nesting depth. It never throws for bad input; errors name the byte offset
// and what was expected.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::advisor::json {

struct Member;

struct Value {
  enum class Type { null, boolean, number, string, array, object };

  Type type = Type::null;
  bool boolean = false;
  double number = 0;
  bool integral = false;  // number written without fraction or exponent
  std::string text;       // string value, or a number's lexeme
  std::vector<Value> items;     // array
  std::vector<Member> members;  // object, input order

  // Member by key, or nullptr (also when this is not an object).
  const Value* find(std::string_view key) const;
};

struct Member {
  std::string key;
  Value value;
};

const char* type_name(Value::Type t);

inline constexpr int kDefaultMaxDepth = 32;
// Each Value is ~100 bytes: this bounds memory to a few MB whatever the input
// (the decision needs a handful of values, an envelope a few dozen).
inline constexpr size_t kDefaultMaxValues = 1 << 16;

// The parsed document, or nullopt with *error set (if error is non-null).
std::optional<Value> parse(std::string_view text, std::string* error,
                           int max_depth = kDefaultMaxDepth,
                           size_t max_values = kDefaultMaxValues);

// `s` as a JSON string literal, quotes included. Control characters are
// escaped; other bytes are copied as they are.
std::string quote(std::string_view s);


}  // namespace sluice::advisor::json
