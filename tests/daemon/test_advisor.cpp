// Tests for the LLM advisor (daemon/advisor) against a scripted stub model
// server: a real TCP server on 127.0.0.1 with an ephemeral port, speaking the
// Ollama and OpenAI response shapes, stalling, trickling or flooding on demand.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "advisor/async_advisor.hpp"
#include "advisor/decision.hpp"
#include "advisor/http_client.hpp"
#include "advisor/json.hpp"
#include "advisor/llm_advisor.hpp"
#include "advisor/prompt.hpp"
#include "text/utf8.hpp"

namespace {

namespace json = sluice::advisor::json;
namespace http = sluice::advisor::http;
using sluice::advisor::AdvisorConfig;
using sluice::advisor::AdvisorOutcome;
using sluice::advisor::AdvisorResult;
using sluice::advisor::AsyncAdvisor;
using sluice::advisor::LlmAdvisor;
using sluice::advisor::outcome_name;
using sluice::policy_loop::Snapshot;
using sluice::policy_loop::Surge;
using sluice::policy_loop::TierView;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// ---- the stub server -------------------------------------------------------

struct Reply {
  int status = 200;
  std::string body;
  enum class Framing { content_length, chunked, until_close } framing = Framing::content_length;
  std::chrono::milliseconds stall{0};     // after reading the request, before answering
  size_t flood_bytes = 0;                 // >0: send this much filler as the body instead
  std::chrono::milliseconds trickle{0};   // >0: send the body one byte per interval
  // Hand-written responses for framing tests: when raw is set, it is sent
  // verbatim instead of the head and body above; then `endless`, if set, is
  // sent over and over, as fast as the client reads, for up to 10 s.
  std::string raw;
  std::string endless;
};

class StubServer {
 public:
  using Handler = std::function<Reply(const std::string& request)>;

  explicit StubServer(Handler handler) : handler_(std::move(handler)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    const int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 8) != 0)
      ADD_FAILURE() << "stub server: bind/listen failed";
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }

  ~StubServer() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    ::close(listen_fd_);
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  std::vector<std::string> requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }
  size_t bytes_sent() const {
    std::lock_guard lock(mu_);
    return bytes_sent_;
  }

 private:
  bool stopping() {
    std::lock_guard lock(mu_);
    return stop_;
  }

  // Sleeps up to d, waking early when the server stops.
  void pause(std::chrono::milliseconds d) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, d, [this] { return stop_; });
  }

  void serve() {
    while (!stopping()) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      timeval tv{5, 0};  // never hang the suite on a client that stopped reading
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      handle(fd);
      ::close(fd);
    }
  }

  std::string read_request(int fd) {
    std::string req;
    char buf[4096];
    size_t want = std::string::npos;
    while (want == std::string::npos || req.size() < want) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      req.append(buf, size_t(n));
      const size_t end = req.find("\r\n\r\n");
      if (want == std::string::npos && end != std::string::npos) {
        size_t length = 0;
        const size_t cl = req.find("Content-Length: ");
        if (cl != std::string::npos && cl < end) length = std::stoul(req.substr(cl + 16));
        want = end + 4 + length;
      }
    }
    return req;
  }

  bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(size_t(n));
      std::lock_guard lock(mu_);
      bytes_sent_ += size_t(n);
    }
    return true;
  }

  void handle(int fd) {
    const std::string request = read_request(fd);
    {
      std::lock_guard lock(mu_);
      requests_.push_back(request);
    }
    const Reply r = handler_(request);
    if (r.stall.count() > 0) pause(r.stall);
    if (stopping()) return;
    if (!r.raw.empty()) {
      if (!send_all(fd, r.raw)) return;
      const auto until = Clock::now() + 10s;
      while (!r.endless.empty() && !stopping() && Clock::now() < until)
        if (!send_all(fd, r.endless)) return;  // client gave up
      return;
    }

    const size_t body_size = r.flood_bytes ? r.flood_bytes : r.body.size();
    std::string head = "HTTP/1.1 " + std::to_string(r.status) + " Stub\r\nContent-Type: application/json\r\n";
    if (r.framing == Reply::Framing::content_length)
      head += "Content-Length: " + std::to_string(body_size) + "\r\n";
    if (r.framing == Reply::Framing::chunked) head += "Transfer-Encoding: chunked\r\n";
    head += "Connection: close\r\n\r\n";
    if (!send_all(fd, head)) return;

    auto send_piece = [&](std::string_view piece) {
      if (r.framing != Reply::Framing::chunked) return send_all(fd, piece);
      char size[32];
      std::snprintf(size, sizeof size, "%zx\r\n", piece.size());
      return send_all(fd, size) && send_all(fd, piece) && send_all(fd, "\r\n");
    };
    if (r.flood_bytes) {
      const std::string filler(64 * 1024, 'x');
      for (size_t sent = 0; sent < r.flood_bytes && !stopping();) {
        const size_t n = std::min(filler.size(), r.flood_bytes - sent);
        if (!send_piece(std::string_view(filler).substr(0, n))) return;  // client gave up
        sent += n;
      }
    } else if (r.trickle.count() > 0) {
      for (const char c : r.body) {
        if (stopping() || !send_piece(std::string_view(&c, 1))) return;
        pause(r.trickle);
      }
    } else if (!r.body.empty() && !send_piece(r.body)) {
      return;
    }
    if (r.framing == Reply::Framing::chunked) send_all(fd, "0\r\n\r\n");
  }

  Handler handler_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<std::string> requests_;
  size_t bytes_sent_ = 0;
};

// ---- fixtures --------------------------------------------------------------

TierView tier(std::string name, uint32_t limit, uint32_t floor, uint32_t ceiling, double revenue,
              bool adaptive) {
  TierView t;
  t.name = std::move(name);
  t.limit = t.baseline = limit;
  t.floor = floor;
  t.ceiling = t.max_limit = ceiling;
  t.window_ns = 1'000'000'000;
  t.revenue_per_request = revenue;
  t.adaptive = adaptive;
  t.keys = 12;
  t.offered_rps = 340.5;
  t.admitted_rps = 300;
  t.denied_rps = 40.5;
  t.ewma_rps = 280.25;
  t.forecast_rps = 390;
  return t;
}

Snapshot snapshot(uint64_t tick = 42) {
  Snapshot s;
  s.now_ns = 1'700'000'000'000'000'000;
  s.tick = tick;
  s.capacity_rps = 5000;
  s.host_surge = Surge::surge;
  s.tiers = {tier("free", 100, 10, 1000, 0.001, true), tier("pro", 500, 50, 5000, 0.02, true),
             tier("internal", 10000, 1, 20000, 0, false)};
  return s;
}

std::string ollama_envelope(const std::string& content) {
  return R"({"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":)" +
         json::quote(content) + R"(},"done_reason":"stop","done":true,"total_duration":1})";
}

std::string openai_envelope(const std::string& content) {
  return R"({"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,)"
         R"("message":{"role":"assistant","content":)" +
         json::quote(content) + R"(},"finish_reason":"stop"}],"usage":{"total_tokens":9}})";
}

const std::string kGoodDecision =
    R"({"limits":{"free":200,"pro":800,"internal":10000},"confidence":0.9,"rationale":"denials on free"})";

AdvisorConfig config_for(const StubServer& s, AdvisorConfig::Kind kind = AdvisorConfig::ollama) {
  AdvisorConfig c;
  c.kind = kind;
  c.base_url = s.url();
  c.model = "llama3.2:1b";
  return c;
}

Reply ok_reply(std::string body) {
  Reply r;
  r.body = std::move(body);
  return r;
}

// A loopback port with nothing listening: bound, never listened on, closed.
int unused_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

AdvisorResult ask_ollama(const std::string& content) {
  StubServer server([&](const std::string&) { return ok_reply(ollama_envelope(content)); });
  return LlmAdvisor(config_for(server)).ask(snapshot());
}

// ---- JSON reader -----------------------------------------------------------

TEST(AdvisorJson, ParsesValuesAndEscapes) {
  std::string err;
  auto v = json::parse(R"( {"a":[1,-2.5e3,true,false,null],"s":"q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"} )",
                       &err);
  ASSERT_TRUE(v) << err;
  const json::Value* a = v->find("a");
  ASSERT_TRUE(a);
  ASSERT_EQ(a->items.size(), 5u);
  EXPECT_TRUE(a->items[0].integral);
  EXPECT_EQ(a->items[0].number, 1);
  EXPECT_FALSE(a->items[1].integral);
  EXPECT_EQ(a->items[1].number, -2500);
  EXPECT_TRUE(a->items[2].boolean);
  EXPECT_EQ(a->items[4].type, json::Value::Type::null);
  EXPECT_EQ(v->find("s")->text, "q\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
}

TEST(AdvisorJson, RejectsWhatTheRfcDoesNotAllow) {
  const char* bad[] = {
      "",           "{",          "{\"a\":1,}",    "[1,]",          "01",        "1.",
      "-",          "1e",         "{'a':1}",       "{\"a\" 1}",     "[1 2]",     "tru",
      "\"\\x\"",    "\"\\ud800\"", "\"\\udc00\"",   "\"a\nb\"",      "{} x",      "// c\n{}",
      "{\"a\":1,\"a\":2}",        "\"unterminated", "[\"\\u12\"]",   "NaN",       "+1",
  };
  for (const char* text : bad) {
    std::string err;
    EXPECT_FALSE(json::parse(text, &err)) << "accepted: " << text;
    EXPECT_NE(err.find("offset"), std::string::npos) << text << " -> " << err;
  }
}

TEST(AdvisorJson, StringsMustBeWellFormedUtf8) {
  // A model's rationale goes into the audit trail and `sluicectl audit --json`.
  const char* bad[] = {"\"\xff\xfe\"",         "\"\xc0\xaf\"",         "\"\xe0\x80\xaf\"", "\"\xed\xa0\x80\"",
                       "\"\xf4\x90\x80\x80\"", "\"\xe2\x82\"",         "\"\x80\"",         "\"\xf8\x88\x80\x80\x80\""};
  for (const char* b : bad) {
    std::string err;
    EXPECT_FALSE(json::parse(b, &err)) << "accepted " << ::testing::PrintToString(std::string(b));
    EXPECT_NE(err.find("UTF-8"), std::string::npos) << err;
  }
  std::string err;
  const auto ok = json::parse("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"", &err);
  ASSERT_TRUE(ok) << err;
  EXPECT_EQ(ok->text, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
}

TEST(AdvisorJson, Utf8CleanCutsBetweenCharactersAndReplacesBadBytes) {
  EXPECT_EQ(sluice::text::utf8_clean("a\xc3\xa9", 2), "a") << "cut inside a character";
  EXPECT_EQ(sluice::text::utf8_clean("a\xc3\xa9", 3), "a\xc3\xa9");
  EXPECT_EQ(sluice::text::utf8_clean("x\xffy"), "x\xef\xbf\xbdy");
  EXPECT_EQ(sluice::text::utf8_clean("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd") << "a surrogate is three bad bytes";
  EXPECT_EQ(sluice::text::utf8_clean("plain"), "plain");
}

TEST(TerminalSafe, ShowsControlsAndReorderingMarksAsEscapes) {
  using sluice::text::terminal_safe;
  EXPECT_EQ(terminal_safe("plain text, caf\xC3\xA9"), "plain text, caf\xC3\xA9");
  EXPECT_EQ(terminal_safe("a\nb\rc\td\x1b[31me\x7f"), "a\\x0ab\\x0dc\\x09d\\x1b[31me\\x7f");
  EXPECT_EQ(terminal_safe(std::string("nul\0x", 5)), "nul\\x00x");
  EXPECT_EQ(terminal_safe("c1 \xC2\x85 \xC2\x9B"), "c1 \\u0085 \\u009b");
  EXPECT_EQ(terminal_safe("rlo \xE2\x80\xAE lri \xE2\x81\xA6 rlm \xE2\x80\x8F"), "rlo \\u202e lri \\u2066 rlm \\u200f");
  EXPECT_EQ(terminal_safe("a\\x0a"), "a\\\\x0a") << "a literal escape cannot pass for one";
  EXPECT_EQ(terminal_safe("bad \xFF"), "bad \xEF\xBF\xBD");
}

TEST(AdvisorJson, BoundsNestingDepth) {
  std::string err;
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_FALSE(json::parse(deep, &err));
  EXPECT_NE(err.find("nesting"), std::string::npos) << err;
  const std::string ok = std::string(32, '[') + std::string(32, ']');
  EXPECT_TRUE(json::parse(ok, &err)) << err;
}

// Inputs up to max_response_bytes must neither stall the worker nor blow up
// memory (values are counted; duplicate keys are found by sorting).
TEST(AdvisorJson, LargeInputsAreBoundedAndQuick) {
  auto object_of = [](int n) {
    std::string s = "{";
    for (int i = 0; i < n; ++i) s += (i ? ",\"" : "\"") + std::to_string(i) + "\":0";
    return s + "}";
  };
  const std::string many = object_of(30000);
  const std::string too_many = object_of(150000);  // ~1.3 MB
  const std::string long_number = "1" + std::string(1 << 20, '7');
  const std::string long_string = "\"" + std::string(1 << 20, 'a') + "\"";
  const auto start = Clock::now();
  std::string err;
  EXPECT_TRUE(json::parse(many, &err)) << err;
  EXPECT_FALSE(json::parse(too_many, &err));
  EXPECT_NE(err.find("more values"), std::string::npos) << err;
  EXPECT_TRUE(json::parse(long_number, &err)) << err;
  EXPECT_TRUE(json::parse(long_string, &err)) << err;
  EXPECT_FALSE(json::parse(many.substr(0, many.size() - 1) + ",\"7\":1}", &err));
  EXPECT_NE(err.find("duplicate key \"7\""), std::string::npos) << err;
  EXPECT_LT(seconds_since(start), 3.0);  // a bound for sanitizer builds, not a speed claim
}

TEST(AdvisorJson, SurvivesRandomMutations) {
  const std::string seed = ollama_envelope(kGoodDecision);
  std::mt19937 rng(1234);
  for (int i = 0; i < 20000; ++i) {
    std::string s = seed;
    const int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % s.size();
      switch (rng() % 3) {
        case 0: s[at] = char(rng() % 256); break;
        case 1: s.erase(at, 1 + rng() % 8); break;
        default: s.insert(s.begin() + long(at), "{}[]\",:\\0e-"[rng() % 12]); break;
      }
      if (s.empty()) s.push_back('x');
    }
    std::string err;
    (void)json::parse(s, &err);  // must not crash, hang or throw
    (void)sluice::advisor::parse_decision(s, snapshot(), &err);
  }
}

TEST(AdvisorJson, QuoteRoundTrips) {
  const std::string raw = std::string("tab\there \"quoted\" back\\slash \x01 nul") + '\0' + "end";
  std::string err;
  auto v = json::parse(json::quote(raw), &err);
  ASSERT_TRUE(v) << err;
  EXPECT_EQ(v->text, raw);
}

// ---- URL and config --------------------------------------------------------

TEST(AdvisorConfig, RefusesHttpsAndHostNamesClearly) {
  http::Url u;
  std::string err;
  EXPECT_FALSE(http::parse_url("https://127.0.0.1:11434", &u, &err));
  EXPECT_NE(err.find("https:// is not supported"), std::string::npos) << err;
  EXPECT_FALSE(http::parse_url("http://example.com:80", &u, &err));
  EXPECT_NE(err.find("numeric address"), std::string::npos) << err;
  EXPECT_FALSE(http::parse_url("http://127.0.0.1:99999", &u, &err));
  EXPECT_FALSE(http::parse_url("http://127.0.0.1:80/a b", &u, &err));
  ASSERT_TRUE(http::parse_url("http://localhost:8080/proxy/", &u, &err)) << err;
  EXPECT_EQ(u.host, "127.0.0.1");
  EXPECT_EQ(u.port, 8080);
  EXPECT_EQ(u.path, "/proxy");
  ASSERT_TRUE(http::parse_url("http://[::1]:11434", &u, &err)) << err;
  EXPECT_EQ(u.host, "::1");

  AdvisorConfig c;
  c.model = "m";
  EXPECT_EQ(sluice::advisor::validate_config(c), "");
  c.base_url = "https://127.0.0.1:11434";
  EXPECT_NE(sluice::advisor::validate_config(c).find("https"), std::string::npos);
  const AdvisorResult r = LlmAdvisor(c).ask(snapshot());
  EXPECT_EQ(r.outcome, AdvisorOutcome::bad_config);
  EXPECT_NE(r.detail.find("https:// is not supported"), std::string::npos) << r.detail;
  c.base_url = "http://127.0.0.1:1";
  c.api_key = "k\r\nX-Injected: 1";
  EXPECT_NE(sluice::advisor::validate_config(c), "");
}

// ---- LlmAdvisor against the stub -------------------------------------------

TEST(LlmAdvisor, OllamaValidAnswerGivesLimits) {
  const AdvisorResult r = ask_ollama(kGoodDecision);
  ASSERT_EQ(r.outcome, AdvisorOutcome::ok) << r.detail;
  ASSERT_TRUE(r.advice);
  EXPECT_EQ(r.advice->limits, (std::vector<uint32_t>{200, 800, 10000}));
  EXPECT_EQ(r.advice->clamped, (std::vector<bool>{false, false, false}));
  EXPECT_DOUBLE_EQ(r.advice->confidence, 0.9);
  EXPECT_EQ(r.advice->rationale, "denials on free");
  EXPECT_EQ(r.tick, 42u);
  EXPECT_GT(r.latency_ns, 0);
}

TEST(LlmAdvisor, OllamaRequestCarriesTiersStreamFalseAndSchema) {
  StubServer server([](const std::string&) { return ok_reply(ollama_envelope(kGoodDecision)); });
  ASSERT_EQ(LlmAdvisor(config_for(server)).ask(snapshot()).outcome, AdvisorOutcome::ok);
  const auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 1u);
  const std::string& raw = reqs[0];
  EXPECT_EQ(raw.rfind("POST /api/chat HTTP/1.1\r\n", 0), 0u) << raw.substr(0, 80);
  const std::string body = raw.substr(raw.find("\r\n\r\n") + 4);
  std::string err;
  const auto doc = json::parse(body, &err);
  ASSERT_TRUE(doc) << err << "\n" << body;
  EXPECT_EQ(doc->find("model")->text, "llama3.2:1b");
  ASSERT_TRUE(doc->find("stream"));
  EXPECT_EQ(doc->find("stream")->type, json::Value::Type::boolean);
  EXPECT_FALSE(doc->find("stream")->boolean);
  const json::Value* format = doc->find("format");
  ASSERT_TRUE(format && format->type == json::Value::Type::object);
  const json::Value* tier_props = format->find("properties")->find("limits")->find("properties");
  ASSERT_TRUE(tier_props);
  EXPECT_EQ(tier_props->find("free")->find("minimum")->number, 10);
  EXPECT_EQ(tier_props->find("pro")->find("maximum")->number, 5000);
  EXPECT_EQ(tier_props->find("internal")->find("minimum")->number, 10000);  // fixed tier
  const json::Value* messages = doc->find("messages");
  ASSERT_TRUE(messages && messages->items.size() == 2);
  EXPECT_EQ(messages->items[0].find("role")->text, "system");
  const std::string& prompt = messages->items[1].find("content")->text;
  for (const char* needle : {"\"free\"", "\"pro\"", "\"internal\"", "Host capacity 5000.0", "surge",
                             "340.5", "280.2", "390.0", "fixed", "adaptive", "Tick 42."})
    EXPECT_NE(prompt.find(needle), std::string::npos) << needle << "\n" << prompt;
}

TEST(LlmAdvisor, OpenAiValidAnswerAndRequestShape) {
  StubServer server([](const std::string&) { return ok_reply(openai_envelope(kGoodDecision)); });
  AdvisorConfig c = config_for(server, AdvisorConfig::openai);
  c.api_key = "sk-test";
  const AdvisorResult r = LlmAdvisor(c).ask(snapshot());
  ASSERT_EQ(r.outcome, AdvisorOutcome::ok) << r.detail;
  EXPECT_EQ(r.advice->limits, (std::vector<uint32_t>{200, 800, 10000}));
  const std::string raw = server.requests().at(0);
  EXPECT_EQ(raw.rfind("POST /v1/chat/completions HTTP/1.1\r\n", 0), 0u);
  EXPECT_NE(raw.find("\r\nAuthorization: Bearer sk-test\r\n"), std::string::npos);
  std::string err;
  const auto doc = json::parse(raw.substr(raw.find("\r\n\r\n") + 4), &err);
  ASSERT_TRUE(doc) << err;
  EXPECT_EQ(doc->find("model")->text, "llama3.2:1b");
  EXPECT_EQ(doc->find("response_format")->find("type")->text, "json_schema");
  EXPECT_TRUE(doc->find("response_format")->find("json_schema")->find("schema"));
}

TEST(LlmAdvisor, ChunkedResponseIsDecoded) {
  StubServer server([](const std::string&) {
    Reply r = ok_reply(ollama_envelope(kGoodDecision));
    r.framing = Reply::Framing::chunked;
    return r;
  });
  const AdvisorResult r = LlmAdvisor(config_for(server)).ask(snapshot());
  EXPECT_EQ(r.outcome, AdvisorOutcome::ok) << r.detail;
}

TEST(LlmAdvisor, MalformedJsonIsMalformed) {
  EXPECT_EQ(ask_ollama("{\"limits\": {\"free\": 200,").outcome, AdvisorOutcome::malformed);
  EXPECT_EQ(ask_ollama("Sure! Here are the limits: ...").outcome, AdvisorOutcome::malformed);
  EXPECT_EQ(ask_ollama("```json\n" + kGoodDecision + "\n```").outcome, AdvisorOutcome::malformed);
  StubServer server([](const std::string&) { return ok_reply("{\"message\": oops}"); });
  const AdvisorResult r = LlmAdvisor(config_for(server)).ask(snapshot());
  EXPECT_EQ(r.outcome, AdvisorOutcome::malformed);
  EXPECT_NE(r.detail.find("envelope"), std::string::npos) << r.detail;
  EXPECT_FALSE(r.advice);
}

struct BadDecision {
  const char* name;
  std::string content;
  const char* detail;  // a part of the error message
};

class LlmAdvisorBadDecision : public testing::TestWithParam<BadDecision> {};

TEST_P(LlmAdvisorBadDecision, IsMalformed) {
  const AdvisorResult r = ask_ollama(GetParam().content);
  EXPECT_EQ(r.outcome, AdvisorOutcome::malformed) << outcome_name(r.outcome) << ": " << r.detail;
  EXPECT_NE(r.detail.find(GetParam().detail), std::string::npos) << r.detail;
  EXPECT_FALSE(r.advice);
}

INSTANTIATE_TEST_SUITE_P(
    Strictness, LlmAdvisorBadDecision,
    testing::Values(
        BadDecision{"missing_tier", R"({"limits":{"free":200,"internal":1},"confidence":0.9,"rationale":"r"})",
                    "tier \"pro\" missing"},
        BadDecision{"extra_field",
                    R"({"limits":{"free":1,"pro":1,"internal":1},"confidence":0.9,"rationale":"r","x":1})",
                    "unknown field \"x\""},
        BadDecision{"unknown_tier",
                    R"({"limits":{"free":1,"pro":1,"internal":1,"gold":5},"confidence":0.9,"rationale":"r"})",
                    "unknown tier \"gold\""},
        BadDecision{"fractional_limit",
                    R"({"limits":{"free":200.5,"pro":1,"internal":1},"confidence":0.9,"rationale":"r"})",
                    "not an integer (200.5)"},
        BadDecision{"exponent_limit",
                    R"({"limits":{"free":2e2,"pro":1,"internal":1},"confidence":0.9,"rationale":"r"})",
                    "not an integer"},
        BadDecision{"string_limit",
                    R"({"limits":{"free":"200","pro":1,"internal":1},"confidence":0.9,"rationale":"r"})",
                    "not an integer (string)"},
        BadDecision{"missing_confidence", R"({"limits":{"free":1,"pro":1,"internal":1},"rationale":"r"})",
                    "missing \"confidence\""},
        BadDecision{"confidence_above_one",
                    R"({"limits":{"free":1,"pro":1,"internal":1},"confidence":1.5,"rationale":"r"})",
                    "outside [0, 1]"},
        BadDecision{"rationale_not_string",
                    R"({"limits":{"free":1,"pro":1,"internal":1},"confidence":0.9,"rationale":7})",
                    "\"rationale\" is number"},
        BadDecision{"limits_array", R"({"limits":[1,2,3],"confidence":0.9,"rationale":"r"})",
                    "\"limits\" is array"},
        BadDecision{"not_object", R"([1,2,3])", "not a JSON object"},
        BadDecision{"duplicate_tier",
                    R"({"limits":{"free":1,"free":2,"pro":1,"internal":1},"confidence":0.9,"rationale":"r"})",
                    "duplicate key"}),
    [](const testing::TestParamInfo<BadDecision>& info) { return std::string(info.param.name); });

TEST(LlmAdvisor, ServerErrorAndRefusalAreMalformed) {
  StubServer ollama([](const std::string&) { return ok_reply(R"({"error":"model not loaded"})"); });
  AdvisorResult r = LlmAdvisor(config_for(ollama)).ask(snapshot());
  EXPECT_EQ(r.outcome, AdvisorOutcome::malformed);
  EXPECT_NE(r.detail.find("model not loaded"), std::string::npos) << r.detail;

  StubServer openai([](const std::string&) {
    return ok_reply(R"({"choices":[{"message":{"role":"assistant","content":null,"refusal":"no"}}]})");
  });
  r = LlmAdvisor(config_for(openai, AdvisorConfig::openai)).ask(snapshot());
  EXPECT_EQ(r.outcome, AdvisorOutcome::malformed);
  EXPECT_NE(r.detail.find("refused"), std::string::npos) << r.detail;
}

TEST(LlmAdvisor, LowConfidenceIsNotUsed) {
  const AdvisorResult r =
      ask_ollama(R"({"limits":{"free":200,"pro":800,"internal":10000},"confidence":0.3,"rationale":"unsure"})");
  EXPECT_EQ(r.outcome, AdvisorOutcome::low_confidence) << r.detail;
  EXPECT_FALSE(r.advice);
  EXPECT_NE(r.detail.find("unsure"), std::string::npos) << r.detail;
}

TEST(LlmAdvisor, OutOfBoundsLimitsAreClampedAndFlagged) {
  const AdvisorResult r = ask_ollama(
      R"({"limits":{"free":5,"pro":99999999999999999999,"internal":3},"confidence":0.8,"rationale":"r"})");
  ASSERT_EQ(r.outcome, AdvisorOutcome::clamped) << r.detail;
  ASSERT_TRUE(r.advice);
  EXPECT_EQ(r.advice->limits, (std::vector<uint32_t>{10, 5000, 10000}));  // floor, ceiling, untouched
  EXPECT_EQ(r.advice->clamped, (std::vector<bool>{true, true, false}));
  EXPECT_NE(r.detail.find("free, pro"), std::string::npos) << r.detail;

  const AdvisorResult neg =
      ask_ollama(R"({"limits":{"free":-7,"pro":50,"internal":10000},"confidence":0.8,"rationale":"r"})");
  ASSERT_EQ(neg.outcome, AdvisorOutcome::clamped) << neg.detail;
  EXPECT_EQ(neg.advice->limits, (std::vector<uint32_t>{10, 50, 10000}));
  EXPECT_EQ(neg.advice->clamped, (std::vector<bool>{true, false, false}));
}

TEST(LlmAdvisor, NonAdaptiveTierKeepsItsLimit) {
  const AdvisorResult r =
      ask_ollama(R"({"limits":{"free":100,"pro":500,"internal":1},"confidence":0.99,"rationale":"r"})");
  ASSERT_EQ(r.outcome, AdvisorOutcome::ok) << r.detail;
  EXPECT_EQ(r.advice->limits[2], 10000u);
  EXPECT_FALSE(r.advice->clamped[2]);
}

TEST(LlmAdvisor, StalledServerTimesOut) {
  StubServer server([](const std::string&) {
    Reply r = ok_reply(ollama_envelope(kGoodDecision));
    r.stall = 10s;
    return r;
  });
  const auto start = Clock::now();
  const AdvisorResult r = LlmAdvisor(config_for(server)).ask(snapshot());  // timeout_ms = 2000
  const double took = seconds_since(start);
  EXPECT_EQ(r.outcome, AdvisorOutcome::timeout) << r.detail;
  EXPECT_GE(took, 1.9);
  EXPECT_LT(took, 5.0);  // a bound, not a speed claim
  EXPECT_GE(r.latency_ns, 1'900'000'000);
}

TEST(LlmAdvisor, TricklingServerCannotExtendTheDeadline) {
  StubServer server([](const std::string&) {
    Reply r = ok_reply(ollama_envelope(kGoodDecision));
    r.trickle = 20ms;  // every read makes progress; only a total deadline stops this
    return r;
  });
  AdvisorConfig c = config_for(server);
  c.timeout_ms = 500;
  const auto start = Clock::now();
  const AdvisorResult r = LlmAdvisor(c).ask(snapshot());
  EXPECT_EQ(r.outcome, AdvisorOutcome::timeout) << r.detail;
  EXPECT_LT(seconds_since(start), 3.0);
}

TEST(LlmAdvisor, RefusedConnectionIsRefused) {
  AdvisorConfig c;
  c.base_url = "http://127.0.0.1:" + std::to_string(unused_port());
  c.model = "m";
  const AdvisorResult r = LlmAdvisor(c).ask(snapshot());
  EXPECT_EQ(r.outcome, AdvisorOutcome::refused) << r.detail;
}

TEST(LlmAdvisor, Http500IsHttpError) {
  StubServer server([](const std::string&) {
    Reply r = ok_reply(R"({"error":"boom"})");
    r.status = 500;
    return r;
  });
  const AdvisorResult r = LlmAdvisor(config_for(server)).ask(snapshot());
  EXPECT_EQ(r.outcome, AdvisorOutcome::http_error);
  EXPECT_NE(r.detail.find("500"), std::string::npos) << r.detail;
  EXPECT_NE(r.detail.find("boom"), std::string::npos) << r.detail;
}

class LlmAdvisorTooLarge : public testing::TestWithParam<Reply::Framing> {};

TEST_P(LlmAdvisorTooLarge, TenMegabytesIsTooLargeWithoutBufferingIt) {
  constexpr size_t kTen = 10u << 20;
  StubServer server([](const std::string&) {
    Reply r;
    r.framing = GetParam();
    r.flood_bytes = kTen;
    return r;
  });
  AdvisorConfig c = config_for(server);  // max_response_bytes = 1 MiB
  const AdvisorResult r = LlmAdvisor(c).ask(snapshot());
  EXPECT_EQ(r.outcome, AdvisorOutcome::too_large) << r.detail;

  // The same through the HTTP layer, which reports how much it read.
  http::Request req;
  req.url = server.url();
  req.path = "/api/chat";
  req.body = "{}";
  req.deadline = Clock::now() + 5s;
  req.max_body_bytes = c.max_response_bytes;
  const http::Response resp = http::post(req);
  EXPECT_EQ(resp.error, http::Error::too_large) << resp.detail;
  EXPECT_TRUE(resp.body.empty());
  // Headers + the cap + at most a couple of 16 KiB reads (chunk framing included).
  EXPECT_LE(resp.bytes_read, c.max_response_bytes + 64 * 1024) << resp.bytes_read;
}

INSTANTIATE_TEST_SUITE_P(Framing, LlmAdvisorTooLarge,
                         testing::Values(Reply::Framing::content_length, Reply::Framing::chunked,
                                         Reply::Framing::until_close),
                         [](const testing::TestParamInfo<Reply::Framing>& info) {
                           switch (info.param) {
                             case Reply::Framing::content_length: return std::string("content_length");
                             case Reply::Framing::chunked: return std::string("chunked");
                             default: return std::string("until_close");
                           }
                         });

// ---- HTTP framing ----------------------------------------------------------
// Hand-written responses straight through http::post, so each framing rule is
// seen on its own.

Reply raw_reply(std::string raw, std::string endless = "") {
  Reply r;
  r.raw = std::move(raw);
  r.endless = std::move(endless);
  return r;
}

http::Response post_to(const StubServer& server, std::chrono::milliseconds budget = 5000ms,
                       const std::atomic<bool>* cancel = nullptr, size_t max_body_bytes = 0) {
  http::Request req;
  if (max_body_bytes) req.max_body_bytes = max_body_bytes;
  req.url = server.url();
  req.path = "/api/chat";
  req.body = "{}";
  req.deadline = Clock::now() + budget;
  req.cancel = cancel;
  return http::post(req);
}

// A chunked response of 1-byte chunks with 1000-byte extensions, sent without
// pause. Loopback here moves a gigabyte in a quarter second, so the tests that
// want the deadline (not the body cap) to stop it lift the cap out of reach: at
// 1 byte per KiB, the stub's 10 s of sending decode to well under kNoCap.
constexpr size_t kNoCap = size_t(1) << 30;
Reply endless_tiny_chunks() {
  const std::string chunk = "1;" + std::string(1000, 'e') + "\r\nx\r\n";
  std::string burst;
  while (burst.size() < 256 * 1024) burst += chunk;
  return raw_reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", burst);
}

// Trailers count against the header cap: without it a server could send them
// for ever, and nothing but the deadline would stop the read.
TEST(HttpFraming, EndlessTrailersAreRefusedAtTheHeaderCap) {
  StubServer server([](const std::string&) {
    return raw_reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n",
                     "X-Trailer: " + std::string(100, 'a') + "\r\n");
  });
  const auto start = Clock::now();
  const http::Response r = post_to(server, 20s);
  EXPECT_EQ(r.error, http::Error::io) << r.detail;
  EXPECT_NE(r.detail.find("trailers too large"), std::string::npos) << r.detail;
  EXPECT_LT(seconds_since(start), 10.0);  // a bound: the stub stops sending after 10 s
  EXPECT_LE(r.bytes_read, 64 * 1024 + 2 * 16 * 1024 + 256) << r.bytes_read;
}

// 1-byte chunks with 8 KB extensions would make the 1 MiB body cap mean 8 GiB
// read; a chunk-size line is capped at 1 KB.
TEST(HttpFraming, LongChunkExtensionsAreRefused) {
  StubServer server([](const std::string&) {
    return raw_reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                     "1;" + std::string(8000, 'e') + "\r\nx\r\n");
  });
  const http::Response r = post_to(server, 20s);
  EXPECT_EQ(r.error, http::Error::io) << r.detail;
  EXPECT_NE(r.detail.find("chunk size line too long"), std::string::npos) << r.detail;
}

// A server that keeps data coming is cut off at the deadline, and a cancelled
// call stops too. The deadline is checked on every read; on loopback this
// stub cannot outrun the reader, so these also pass with the check made only
// when a read would block: they guard the outcome, not that line.
TEST(HttpFraming, AServerThatNeverPausesIsStillCutOffAtTheDeadline) {
  StubServer server([](const std::string&) { return endless_tiny_chunks(); });
  const auto start = Clock::now();
  const http::Response r = post_to(server, 300ms, nullptr, kNoCap);
  EXPECT_EQ(r.error, http::Error::timeout) << r.detail;
  EXPECT_LT(seconds_since(start), 5.0);  // a bound: the stub sends for 10 s
}

TEST(HttpFraming, CancellationStopsAServerThatNeverPauses) {
  StubServer server([](const std::string&) { return endless_tiny_chunks(); });
  std::atomic<bool> cancel{false};
  std::thread canceller([&] {
    std::this_thread::sleep_for(300ms);
    cancel = true;
  });
  const auto start = Clock::now();
  const http::Response r = post_to(server, 60s, &cancel, kNoCap);
  canceller.join();
  EXPECT_EQ(r.error, http::Error::io) << r.detail;
  EXPECT_NE(r.detail.find("cancelled"), std::string::npos) << r.detail;
  EXPECT_LT(seconds_since(start), 5.0);
}

// An interim response's headers belong to it alone: its Content-Length must
// not frame the final response's body.
TEST(HttpFraming, InterimResponseHeadersDoNotCarryOver) {
  StubServer server([](const std::string&) {
    return raw_reply(
        "HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\n"
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\":1}");
  });
  const http::Response r = post_to(server);
  EXPECT_EQ(r.error, http::Error::none) << r.detail;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{\"a\":1}");
}

struct BadFraming {
  const char* name;
  const char* head;  // status line and headers, without the blank line
  const char* expect;
};

void PrintTo(const BadFraming& b, std::ostream* os) { *os << b.name; }

class HttpFramingRefused : public testing::TestWithParam<BadFraming> {};

// Each of these is ambiguous about where the body ends (the shapes used for
// response splitting) or is not HTTP/1.x at all: refused, never guessed at.
TEST_P(HttpFramingRefused, WithAMessage) {
  const BadFraming& b = GetParam();
  StubServer server([&](const std::string&) {
    return raw_reply(std::string(b.head) + "\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
  });
  const http::Response r = post_to(server);
  EXPECT_EQ(r.error, http::Error::io) << b.name;
  EXPECT_NE(r.detail.find(b.expect), std::string::npos) << b.name << ": " << r.detail;
  EXPECT_TRUE(r.body.empty());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, HttpFramingRefused,
    testing::Values(
        BadFraming{"conflicting_lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3",
                   "conflicting Content-Length"},
        BadFraming{"length_and_chunked",
                   "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked",
                   "both Content-Length and Transfer-Encoding"},
        BadFraming{"chunked_as_a_substring", "HTTP/1.1 200 OK\r\nTransfer-Encoding: notchunked",
                   "unsupported Transfer-Encoding"},
        BadFraming{"gzip_then_chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
                   "unsupported Transfer-Encoding"},
        BadFraming{"four_digit_status", "HTTP/1.1 2000 OK", "not an HTTP/1.x status line"},
        BadFraming{"minor_version_not_a_digit", "HTTP/1.x 200 OK", "not an HTTP/1.x status line"}),
    [](const testing::TestParamInfo<BadFraming>& info) { return std::string(info.param.name); });

TEST(HttpFraming, RepeatedEqualLengthsAndChunkedInAnyCaseAreAccepted) {
  for (const char* head : {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}",
                           "HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                           "HTTP/1.0 200\r\n\r\n{}"}) {
    StubServer server([&](const std::string&) { return raw_reply(head); });
    const http::Response r = post_to(server);
    EXPECT_EQ(r.error, http::Error::none) << head << ": " << r.detail;
    EXPECT_EQ(r.body, "{}") << head;
  }
}

// ---- AsyncAdvisor ----------------------------------------------------------

TEST(AsyncAdvisor, SubmitNeverWaitsForAStalledModel) {
  StubServer server([](const std::string&) {
    Reply r = ok_reply(ollama_envelope(kGoodDecision));
    r.stall = 10s;
    return r;
  });
  AsyncAdvisor advisor(config_for(server));
  ASSERT_TRUE(advisor.running());
  for (uint64_t tick = 1; tick <= 3; ++tick) {
    const auto start = Clock::now();
    advisor.submit(snapshot(tick));
    EXPECT_LT(seconds_since(start), 0.050);
    std::this_thread::sleep_for(20ms);  // let the worker pick up the first one
  }
  EXPECT_FALSE(advisor.take());
  EXPECT_TRUE(advisor.busy());

  std::optional<AdvisorResult> r;
  const auto start = Clock::now();
  while (!(r = advisor.take()) && seconds_since(start) < 5) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(r) << "no result within 5 s";
  EXPECT_EQ(r->outcome, AdvisorOutcome::timeout) << r->detail;
  EXPECT_EQ(r->tick, 1u);
  EXPECT_EQ(advisor.count(AdvisorOutcome::timeout), 1u);
  EXPECT_EQ(advisor.outcome_counts().at("timeout"), 1u);
  EXPECT_EQ(advisor.outcome_counts().size(), sluice::advisor::kAdvisorOutcomeCount);
  EXPECT_GE(advisor.last_latency_ns(), 1'900'000'000);
  EXPECT_EQ(advisor.dropped_snapshots(), 1u);  // tick 2 replaced by tick 3 while waiting
  // Tick 3 is now in flight against the stalled stub; the destructor cancels it.
}

TEST(AsyncAdvisor, DestructorReturnsWhileARequestIsStalled) {
  StubServer server([](const std::string&) {
    Reply r = ok_reply(ollama_envelope(kGoodDecision));
    r.stall = 10s;
    return r;
  });
  auto advisor = std::make_unique<AsyncAdvisor>(config_for(server));
  advisor->submit(snapshot());
  std::this_thread::sleep_for(200ms);  // the request is now in flight
  ASSERT_TRUE(advisor->busy());
  const auto start = Clock::now();
  advisor.reset();
  EXPECT_LT(seconds_since(start), 2.5);  // within the timeout bound (cancellation makes it ~50 ms)
}

TEST(AsyncAdvisor, KeepsOnlyTheNewestPendingSnapshot) {
  StubServer server([](const std::string&) {
    Reply r = ok_reply(ollama_envelope(kGoodDecision));
    r.stall = 300ms;
    return r;
  });
  AsyncAdvisor advisor(config_for(server));
  advisor.submit(snapshot(1));
  std::this_thread::sleep_for(100ms);  // tick 1 in flight
  advisor.submit(snapshot(2));
  advisor.submit(snapshot(3));
  const auto start = Clock::now();
  while (advisor.busy() && seconds_since(start) < 5) std::this_thread::sleep_for(10ms);
  ASSERT_FALSE(advisor.busy());
  const auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_NE(reqs[0].find("Tick 1."), std::string::npos);
  EXPECT_NE(reqs[1].find("Tick 3."), std::string::npos);
  const auto r = advisor.take();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, AdvisorOutcome::ok) << r->detail;
  EXPECT_EQ(r->tick, 3u);
  EXPECT_FALSE(advisor.take());
  EXPECT_EQ(advisor.count(AdvisorOutcome::ok), 2u);
  EXPECT_EQ(advisor.dropped_snapshots(), 1u);
}

}  // namespace
