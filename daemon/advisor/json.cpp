#include "advisor/json.hpp"
#include "text/utf8.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>

namespace sluice::advisor::json {

const Value* Value::find(std::string_view key) const {
  for (const auto& m : members)
    if (m.key == key) return &m.value;
  return nullptr;
}

const char* type_name(Value::Type t) {
  switch (t) {
    case Value::Type::null: return "null";
    case Value::Type::boolean: return "boolean";
    case Value::Type::number: return "number";
    case Value::Type::string: return "string";
    case Value::Type::array: return "array";
    case Value::Type::object: return "object";
  }
  return "?";
}

namespace {

class Parser {
 public:
  Parser(std::string_view in, int max_depth, size_t max_values)
      : in_(in), max_depth_(max_depth), values_left_(max_values) {}

  std::optional<Value> document(std::string* error) {
    Value v;
    skip_ws();
    bool ok = value(v, 0);
    if (ok) {
      skip_ws();
      if (pos_ != in_.size()) ok = fail("unexpected text after the JSON value");
    }
    if (ok) return v;
    if (error) *error = error_;
    return std::nullopt;
  }

 private:
  bool fail(const std::string& what) {
    if (error_.empty()) error_ = "JSON error at offset " + std::to_string(pos_) + ": " + what;
    return false;
  }
  bool at_end() const { return pos_ >= in_.size(); }
  char peek() const { return at_end() ? '\0' : in_[pos_]; }
  void skip_ws() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r'))
      ++pos_;
  }
  bool literal(std::string_view word) {
    if (in_.substr(pos_, word.size()) != word)
      return fail("invalid literal (expected " + std::string(word) + ")");
    pos_ += word.size();
    return true;
  }

  bool value(Value& out, int depth) {
    if (at_end()) return fail("unexpected end of input, expected a value");
    if (values_left_ == 0) return fail("more values than the reader allows");
    --values_left_;
    switch (peek()) {
      case '{': return object(out, depth + 1);
      case '[': return array(out, depth + 1);
      case '"': out.type = Value::Type::string; return string(out.text);
      case 't': out.type = Value::Type::boolean; out.boolean = true; return literal("true");
      case 'f': out.type = Value::Type::boolean; out.boolean = false; return literal("false");
      case 'n': out.type = Value::Type::null; return literal("null");
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return number(out);
        return fail(std::string("unexpected character '") + peek() + "', expected a value");
    }
  }

  bool object(Value& out, int depth) {
    if (depth > max_depth_) return fail("nesting deeper than " + std::to_string(max_depth_));
    out.type = Value::Type::object;
    ++pos_;  // '{'
    skip_ws();
    if (peek() == '}') { ++pos_; return true; }
    for (;;) {
      skip_ws();
      if (peek() != '"') return fail("expected a string key in object");
      std::string key;
      if (!string(key)) return false;
      skip_ws();
      if (peek() != ':') return fail("expected ':' after object key");
      ++pos_;
      skip_ws();
      // Parse in place: moving large Values around is most of the cost.
      out.members.push_back(Member{std::move(key), Value{}});
      if (!value(out.members.back().value, depth)) return false;
      skip_ws();
      if (peek() == ',') { ++pos_; continue; }
      if (peek() == '}') { ++pos_; return unique_keys(out); }
      return fail("expected ',' or '}' in object");
    }
  }

  // Sorting, not a lookup per key: a 1 MiB object can hold ~150k keys.
  bool unique_keys(const Value& obj) {
    std::vector<std::string_view> keys;
    keys.reserve(obj.members.size());
    for (const auto& m : obj.members) keys.push_back(m.key);
    std::sort(keys.begin(), keys.end());
    const auto dup = std::adjacent_find(keys.begin(), keys.end());
    return dup == keys.end() || fail("duplicate key \"" + std::string(*dup) + "\" in object");
  }

  bool array(Value& out, int depth) {
    if (depth > max_depth_) return fail("nesting deeper than " + std::to_string(max_depth_));
    out.type = Value::Type::array;
    ++pos_;  // '['
    skip_ws();
    if (peek() == ']') { ++pos_; return true; }
    for (;;) {
      skip_ws();
      if (!value(out.items.emplace_back(), depth)) return false;
      skip_ws();
      if (peek() == ',') { ++pos_; continue; }
      if (peek() == ']') { ++pos_; return true; }
      return fail("expected ',' or ']' in array");
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  bool number(Value& out) {
    const size_t start = pos_;
    bool integral = true;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
      if (is_digit(peek())) return fail("leading zero in number");
    } else if (is_digit(peek())) {
      while (is_digit(peek())) ++pos_;
    } else {
      return fail("expected a digit in number");
    }
    if (peek() == '.') {
      integral = false;
      ++pos_;
      if (!is_digit(peek())) return fail("expected a digit after '.'");
      while (is_digit(peek())) ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!is_digit(peek())) return fail("expected a digit in exponent");
      while (is_digit(peek())) ++pos_;
    }
    out.type = Value::Type::number;
    out.integral = integral;
    out.text.assign(in_.substr(start, pos_ - start));
    // strtod saturates to +-HUGE_VAL on overflow, which callers treat as out of range.
    out.number = std::strtod(out.text.c_str(), nullptr);
    return true;
  }

  bool hex4(uint32_t& cp) {
    if (in_.size() - pos_ < 4) return fail("truncated \\u escape");
    cp = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = in_[pos_++];
      cp <<= 4;
      if (c >= '0' && c <= '9') cp |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') cp |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') cp |= uint32_t(c - 'A' + 10);
      else return fail("invalid hex digit in \\u escape");
    }
    return true;
  }

  static void append_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) {
      s += char(cp);
    } else if (cp < 0x800) {
      s += char(0xC0 | (cp >> 6));
      s += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += char(0xE0 | (cp >> 12));
      s += char(0x80 | ((cp >> 6) & 0x3F));
      s += char(0x80 | (cp & 0x3F));
    } else {
      s += char(0xF0 | (cp >> 18));
      s += char(0x80 | ((cp >> 12) & 0x3F));
      s += char(0x80 | ((cp >> 6) & 0x3F));
      s += char(0x80 | (cp & 0x3F));
    }
  }

  bool escape(std::string& out) {
    if (at_end()) return fail("unterminated escape");
    const char c = in_[pos_++];
    switch (c) {
      case '"': out += '"'; return true;
      case '\\': out += '\\'; return true;
      case '/': out += '/'; return true;
      case 'b': out += '\b'; return true;
      case 'f': out += '\f'; return true;
      case 'n': out += '\n'; return true;
      case 'r': out += '\r'; return true;
      case 't': out += '\t'; return true;
      case 'u': break;
      default: --pos_; return fail("invalid escape character");
    }
    uint32_t cp = 0;
    if (!hex4(cp)) return false;
    if (cp >= 0xDC00 && cp <= 0xDFFF) return fail("lone low surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      uint32_t lo = 0;
      if (in_.substr(pos_, 2) != "\\u") return fail("high surrogate without a low surrogate");
      pos_ += 2;
      if (!hex4(lo)) return false;
      if (lo < 0xDC00 || lo > 0xDFFF) return fail("high surrogate without a low surrogate");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    append_utf8(out, cp);
    return true;
  }

  bool string(std::string& out) {
    ++pos_;  // opening quote
    for (;;) {
      if (at_end()) return fail("unterminated string");
      const char c = in_[pos_];
      if (c == '"') { ++pos_; return true; }
      if (static_cast<unsigned char>(c) < 0x20) return fail("raw control character in string");
      if (c == '\\') {
        ++pos_;
        if (!escape(out)) return false;
      } else if (static_cast<unsigned char>(c) < 0x80) {
        ++pos_;
        out += c;
      } else {
        const size_t n = text::utf8_sequence(in_, pos_);
        if (n == 0) return fail("invalid UTF-8 in string");
        out.append(in_.substr(pos_, n));
        pos_ += n;
      }
    }
  }

  std::string_view in_;
  int max_depth_;
  size_t values_left_;
  size_t pos_ = 0;
  std::string error_;
};

}  // namespace

std::optional<Value> parse(std::string_view text, std::string* error, int max_depth,
                           size_t max_values) {
  try {
    return Parser(text, max_depth, max_values).document(error);
  } catch (const std::bad_alloc&) {
    if (error) *error = "JSON error: out of memory";
    return std::nullopt;
  }
}

std::string quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

}  // namespace sluice::advisor::json

