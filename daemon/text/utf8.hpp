// UTF-8 checks for text that comes from outside (a model's answer, a server's
// error body) on its way into the audit trail and the JSON sluicectl prints.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

// utf8_sequence: bytes of the well-formed UTF-8 sequence starting at s[pos]
// (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF), or 0.
// utf8_clean: at most max_bytes of `s`, cut only between characters, with every
// byte that is not part of well-formed UTF-8 replaced by U+FFFD.
namespace sluice::text {

inline size_t utf8_sequence(std::string_view s, size_t pos) {
  auto at = [&](size_t i) { return pos + i < s.size() ? static_cast<unsigned char>(s[pos + i]) : 0u; };
  auto cont = [&](size_t i) { return (at(i) & 0xC0) == 0x80; };
  const unsigned b = at(0);
  if (pos >= s.size()) return 0;
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return cont(1) ? 2 : 0;
  if (b >= 0xE0 && b <= 0xEF) {
    const unsigned b1 = at(1);
    if (b == 0xE0 && b1 < 0xA0) return 0;   // overlong
    if (b == 0xED && b1 >= 0xA0) return 0;  // a surrogate
    return cont(1) && cont(2) ? 3 : 0;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    const unsigned b1 = at(1);
    if (b == 0xF0 && b1 < 0x90) return 0;   // overlong
    if (b == 0xF4 && b1 >= 0x90) return 0;  // above U+10FFFF
    return cont(1) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

inline std::string utf8_clean(std::string_view s, size_t max_bytes = std::string_view::npos) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence(s, i);
    const std::string_view piece = n ? s.substr(i, n) : kReplacement;
    if (out.size() + piece.size() > max_bytes) break;
    out.append(piece);
    i += n ? n : 1;
  }
  return out;
}

// Text from outside (a model's rationale, a reason, an id) made safe to print on
// an operator's terminal: well-formed UTF-8 (utf8_clean) in which every control
// character is shown as an escape instead of acting. C0 and DEL as \xNN (a
// newline could forge a record line, ESC could rewrite the screen), C1 and the
// bidirectional overrides as \uNNNN (they reorder what is shown). A backslash
// is doubled, so an escape in the text itself cannot pass for one of these.
inline std::string terminal_safe(std::string_view raw) {
  const std::string s = utf8_clean(raw);
  std::string out;
  char buf[8];
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = utf8_sequence(s, i);  // well-formed here: at least 1
    uint32_t cp = c;
    if (n == 2) cp = (uint32_t(c & 0x1F) << 6) | (uint32_t(s[i + 1]) & 0x3F);
    if (n == 3) cp = (uint32_t(c & 0x0F) << 12) | ((uint32_t(s[i + 1]) & 0x3F) << 6) | (uint32_t(s[i + 2]) & 0x3F);
    if (c < 0x20 || c == 0x7f) {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else if (c == '\\') {
      out += "\\\\";
    } else if ((cp >= 0x80 && cp <= 0x9F) || (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) ||
               cp == 0x200E || cp == 0x200F || cp == 0x061C) {
      std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(cp));
      out += buf;
    } else {
      out.append(s, i, n);
    }
    i += n;
  }
  return out;
}

}  // namespace sluice::text
