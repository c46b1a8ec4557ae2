// Tests for the policy file module (daemon/policy).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "policy/policy.hpp"

namespace {

using sluice::policy::default_policy;
using sluice::policy::load_policy_file;
using sluice::policy::parse_policy_json;
using sluice::policy::PolicyError;
using sluice::policy::PolicySpec;
using sluice::policy::SegmentSpec;
using sluice::policy::TierSpec;
using sluice::policy::to_json;

// A file in a per-process temp directory, removed at the end of the test.
class TempFile {
 public:
  explicit TempFile(const std::string& contents,
                    const std::string& name = "policy.json") {
    dir_ = std::filesystem::temp_directory_path() /
           ("sluice_policy_test." + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / name).string();
    std::ofstream(path_, std::ios::binary) << contents;
  }
  ~TempFile() { std::filesystem::remove_all(dir_); }
  const std::string& path() const { return path_; }

 private:
  std::filesystem::path dir_;
  std::string path_;
};

// Returns the PolicyError message, or fails the test if nothing was thrown.
std::string error_of(const std::string& json) {
  try {
    parse_policy_json(json, "policy.json");
  } catch (const PolicyError& e) {
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << json;
  return {};
}

std::string error_of_file(const std::string& path) {
  try {
    load_policy_file(path);
  } catch (const PolicyError& e) {
    return e.what();
  }
  ADD_FAILURE() << "accepted file: " << path;
  return {};
}

// A tier's JSON; each argument is the raw value text, "" to omit the field.
// `extra` replaces the trailing "adaptive" (duplicate keys are refused).
std::string tier(const std::string& name = "\"t\"",
                 const std::string& limit = "1",
                 const std::string& window = "1000",
                 const std::string& max = "1", const std::string& extra = "") {
  std::string t = "{";
  if (!name.empty()) t += "\"name\": " + name + ", ";
  if (!limit.empty()) t += "\"limit\": " + limit + ", ";
  if (!window.empty()) t += "\"window_ms\": " + window + ", ";
  if (!max.empty()) t += "\"max_limit\": " + max + ", ";
  t += extra.empty() ? "\"adaptive\": true" : extra;
  return t + "}";
}

std::string policy(const std::vector<std::string>& tiers,
                   const std::string& segment = "") {
  std::string p = "{";
  if (!segment.empty()) p += "\"segment\": {" + segment + "}, ";
  p += "\"tiers\": [";
  for (size_t i = 0; i < tiers.size(); ++i) p += (i ? ", " : "") + tiers[i];
  return p + "]}";
}

TEST(Policy, DefaultPolicyHasBuiltInValues) {
  const PolicySpec p = default_policy();
  EXPECT_EQ(p.segment.max_keys, 100000u);
  EXPECT_EQ(p.segment.max_key_bytes, 64u);
  EXPECT_EQ(p.segment.idle_ttl_ms, 60000u);
  const std::vector<TierSpec> want = {
      {"enterprise", 15, 1000, 120, 0.20, true, 1, 120},
      {"pro", 8, 1000, 40, 0.05, true, 1, 40},
      {"free", 3, 1000, 9, 0.01, true, 1, 9},
  };
  EXPECT_EQ(p.tiers, want);
}

TEST(Policy, PolicyLoopSectionsParseAndAreRangeChecked) {
  const PolicySpec p = parse_policy_json(R"({"tiers": [{"name": "a", "limit": 4, "window_ms": 1000,
      "max_limit": 16, "floor": 2, "ceiling": 12}], "capacity_rps": 250.5, "tick_ms": 500,
      "surge": {"surge_ratio": 3, "ddos_ratio": 8, "enter_ticks": 1, "exit_ticks": 4},
      "governance": {"approval_ratio": 2.5, "min_confidence": 0.7, "approval_ttl_s": 60, "approvers": [1000, 0],
                     "approval_window_s": 300},
      "advisor": {"kind": "ollama", "url": "http://127.0.0.1:11434", "model": "llama3"},
      "audit_db": "/tmp/x.db", "audit_retention_days": 90})");
  EXPECT_EQ(p.tiers[0].floor, 2u);
  EXPECT_EQ(p.tiers[0].ceiling, 12u);
  EXPECT_EQ(p.capacity_rps, 250.5);
  EXPECT_EQ(p.tick_ms, 500u);
  EXPECT_EQ(p.surge.ddos_ratio, 8);
  EXPECT_EQ(p.surge.fast_exit_ratio, 1.25) << "the schema's default and SurgeSpec's agree";
  EXPECT_EQ(p.surge.fast_exit_ticks, 2u);
  EXPECT_EQ(parse_policy_json(R"({"tiers": [{"name": "a", "limit": 4, "window_ms": 1000, "max_limit": 16}],
      "surge": {"fast_exit_ratio": 0, "fast_exit_ticks": 3}})")
                .surge.fast_exit_ticks,
            3u);
  EXPECT_EQ(p.governance.approvers, (std::vector<uint32_t>{1000, 0}));
  EXPECT_EQ(p.governance.approval_window_s, 300u);
  EXPECT_EQ(default_policy().governance.approval_window_s, 0u) << "each change on its own unless asked";
  EXPECT_EQ(p.advisor.kind, "ollama");
  EXPECT_EQ(p.audit_db, "/tmp/x.db");
  EXPECT_EQ(p.audit_retention_days, 90u);
  EXPECT_EQ(default_policy().audit_retention_days, 0u) << "every record is kept unless asked";
  EXPECT_EQ(parse_policy_json(to_json(p)), p);
  const std::string tier = R"({"name": "a", "limit": 4, "window_ms": 1000, "max_limit": 16)";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {tier + R"(, "floor": 5}]})", "tiers[0].floor"},
      {tier + R"(, "ceiling": 17}]})", "tiers[0].ceiling"},
      {tier + R"(, "ceiling": 3}]})", "tiers[0].ceiling"},
      {tier + R"(}], "capacity_rps": -1})", "capacity_rps"},
      {tier + R"(}], "surge": {"surge_ratio": 4, "ddos_ratio": 3}})", "surge.ddos_ratio"},
      {tier + R"(}], "surge": {"fast_exit_ratio": 2}})", "surge.fast_exit_ratio"},
      {tier + R"(}], "surge": {"fast_exit_ratio": -1}})", "surge.fast_exit_ratio"},
      {tier + R"(}], "surge": {"fast_exit_ticks": 0}})", "surge.fast_exit_ticks"},
      {tier + R"(}], "governance": {"approval_ratio": 0.5}})", "governance.approval_ratio"},
      {tier + R"(}], "governance": {"min_confidence": 1.5}})", "governance.min_confidence"},
      {tier + R"(}], "governance": {"approval_window_s": 86401}})", "governance.approval_window_s"},
      {tier + R"(}], "advisor": {"kind": "gpt"}})", "advisor.kind"},
      {tier + R"(}], "advisor": {"kind": "ollama", "url": "https://x", "model": "m"}})", "advisor.url"},
      {tier + R"(}], "advisor": {"kind": "openai", "url": "http://127.0.0.1:1"}})", "advisor.model"},
      {tier + R"(}], "governance": {"approvers": ["root"]}})", "approvers"},
      {tier + R"(}], "audit_retention_days": 36501})", "audit_retention_days"},
      {tier + R"(}], "audit_retention_days": -1})", "audit_retention_days"},
  };
  for (const auto &[json, field] : bad) {
    try {
      parse_policy_json(R"({"tiers": [)" + json);
      ADD_FAILURE() << "accepted: " << json;
    } catch (const PolicyError &e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  }
}

TEST(Policy, DefaultPolicyRoundTrips) {
  const PolicySpec p = default_policy();
  EXPECT_EQ(parse_policy_json(to_json(p)), p);
}

// SegmentSpec's C++ defaults and the schema's must agree.
TEST(Policy, OmittedOptionalFieldsTakeDefaults) {
  const PolicySpec p = parse_policy_json(
      R"({"tiers": [{"name": "a", "limit": 1, "window_ms": 1, "max_limit": 1}]})");
  EXPECT_EQ(p.segment, SegmentSpec{});
  ASSERT_EQ(p.tiers.size(), 1u);
  EXPECT_EQ(p.tiers[0].revenue_per_request, 0.0);
  EXPECT_TRUE(p.tiers[0].adaptive);
  EXPECT_EQ(parse_policy_json(R"({"segment": {}, "tiers": [)" + tier() + "]}")
                .segment,
            SegmentSpec{});
}

TEST(Policy, ValidFileLoadsAndRoundTrips) {
  // Each field at its bound; the largest segment and the largest tier are in
  // separate files, as together they exceed the state segment's cap.
  const TempFile f(R"({
    // flatbuffers' JSON dialect allows comments
    "segment": {"max_keys": 100000, "max_key_bytes": 1024, "idle_ttl_ms": 315360000000},
    "tiers": [
      {"name": "Gold-1.x_y", "limit": 1048576, "window_ms": 86400000,
       "max_limit": 1048576, "revenue_per_request": 0.30000000000000004,
       "adaptive": false},
      {"name": "b", "limit": 1, "window_ms": 1, "max_limit": 1,
       "revenue_per_request": 1e-300}
    ]
  })");
  const PolicySpec p = load_policy_file(f.path());
  EXPECT_EQ(p.segment, (SegmentSpec{100000, 1024, 315360000000}));
  ASSERT_EQ(p.tiers.size(), 2u);
  EXPECT_EQ(p.tiers[0], (TierSpec{"Gold-1.x_y", 1048576, 86400000, 1048576,
                                  0.30000000000000004, false, 1, 1048576}));
  EXPECT_EQ(p.tiers[1], (TierSpec{"b", 1, 1, 1, 1e-300, true, 1, 1}));

  const std::string json = to_json(p);
  const PolicySpec again = parse_policy_json(json);
  EXPECT_EQ(again, p);
  EXPECT_EQ(to_json(again), json);

  const PolicySpec wide = parse_policy_json(R"({
    "segment": {"max_keys": 16777216, "max_key_bytes": 1024, "idle_ttl_ms": 1000},
    "tiers": [{"name": "t", "limit": 1, "window_ms": 1, "max_limit": 1,
               "revenue_per_request": 1000000}]})");
  EXPECT_EQ(wide.segment, (SegmentSpec{16777216, 1024, 1000}));
  EXPECT_EQ(wide.tiers[0].revenue_per_request, 1e6);
  EXPECT_EQ(parse_policy_json(to_json(wide)), wide);
}

struct BadCase {
  const char* what;
  std::string json;
  std::string expect;  // must appear in the message
};

TEST(Policy, RefusesOutOfRangeAndMissingFields) {
  std::vector<std::string> many(33, "");
  for (size_t i = 0; i < many.size(); ++i)
    many[i] = tier("\"t" + std::to_string(i) + "\"");

  const std::vector<BadCase> cases = {
      {"no tiers", "{}", "policy.json: tiers: missing"},
      {"null tiers", R"({"tiers": null})", "policy.json: tiers: missing"},
      {"empty tiers", policy({}),
       "policy.json: tiers: 0 entries is not allowed (must be 1..32)"},
      {"33 tiers", policy(many),
       "policy.json: tiers: 33 entries is not allowed (must be 1..32)"},
      {"name missing", policy({tier("")}),
       "policy.json: tiers[0].name: missing"},
      {"name empty", policy({tier("\"\"")}),
       "policy.json: tiers[0].name: 0 bytes is not allowed"},
      {"name 32 bytes", policy({tier("\"" + std::string(32, 'n') + "\"")}),
       "policy.json: tiers[0].name: 32 bytes is not allowed (must be 1..31)"},
      {"name space", policy({tier("\"a b\"")}),
       "policy.json: tiers[0].name: byte 1 (0x20)"},
      {"name slash", policy({tier("\"a/b\"")}),
       "policy.json: tiers[0].name: byte 1 (0x2F)"},
      {"name utf8", policy({tier("\"caf\\u00e9\"")}),
       "policy.json: tiers[0].name: byte 3 (0xC3)"},
      {"name NUL", policy({tier("\"a\\u0000\"")}),
       "policy.json: tiers[0].name: byte 1 (0x00)"},
      {"name duplicate", policy({tier("\"a\""), tier("\"a\"")}),
       "policy.json: tiers[1].name: \"a\" duplicates tiers[0].name"},
      {"limit missing", policy({tier("\"t\"", "")}),
       "policy.json: tiers[0].limit: missing"},
      {"window missing", policy({tier("\"t\"", "1", "")}),
       "policy.json: tiers[0].window_ms: missing"},
      {"max_limit missing", policy({tier("\"t\"", "1", "1", "")}),
       "policy.json: tiers[0].max_limit: missing"},
      {"limit 0", policy({tier("\"a\""), tier("\"b\"", "0", "1000", "40")}),
       "policy.json: tiers[1].limit: 0 is not allowed (must be 1..max_limit, "
       "here 40)"},
      {"limit > max_limit", policy({tier("\"t\"", "5", "1000", "4")}),
       "policy.json: tiers[0].limit: 5 is not allowed (must be 1..max_limit, "
       "here 4)"},
      {"max_limit 0", policy({tier("\"t\"", "1", "1000", "0")}),
       "policy.json: tiers[0].max_limit: 0 is not allowed (must be "
       "1..1048576)"},
      {"max_limit too big", policy({tier("\"t\"", "1", "1000", "1048577")}),
       "policy.json: tiers[0].max_limit: 1048577 is not allowed (must be "
       "1..1048576)"},
      {"window 0", policy({tier("\"t\"", "1", "0")}),
       "policy.json: tiers[0].window_ms: 0 is not allowed (must be "
       "1..86400000)"},
      {"window > 1 day", policy({tier("\"t\"", "1", "86400001")}),
       "policy.json: tiers[0].window_ms: 86400001 is not allowed (must be "
       "1..86400000)"},
      {"revenue negative",
       policy({tier("\"t\"", "1", "1", "1", "\"revenue_per_request\": -0.01")}),
       "policy.json: tiers[0].revenue_per_request: -0.01 is not allowed (must "
       "be finite and >= 0)"},
      {"revenue nan",
       policy({tier("\"t\"", "1", "1", "1", "\"revenue_per_request\": nan")}),
       "policy.json: tiers[0].revenue_per_request: nan is not allowed"},
      {"revenue inf",
       policy({tier("\"t\"", "1", "1", "1", "\"revenue_per_request\": inf")}),
       "policy.json: tiers[0].revenue_per_request: inf is not allowed"},
      {"revenue overflow",
       policy({tier("\"t\"", "1", "1", "1", "\"revenue_per_request\": 1e999")}),
       "policy.json: tiers[0].revenue_per_request: inf is not allowed"},
      {"max_keys 0", policy({tier()}, "\"max_keys\": 0"),
       "policy.json: segment.max_keys: 0 is not allowed (must be 1..16777216)"},
      {"max_keys too big", policy({tier()}, "\"max_keys\": 16777217"),
       "policy.json: segment.max_keys: 16777217 is not allowed (must be "
       "1..16777216)"},
      {"max_key_bytes 0", policy({tier()}, "\"max_key_bytes\": 0"),
       "policy.json: segment.max_key_bytes: 0 is not allowed (must be "
       "1..1024)"},
      {"max_key_bytes too big", policy({tier()}, "\"max_key_bytes\": 1025"),
       "policy.json: segment.max_key_bytes: 1025 is not allowed (must be "
       "1..1024)"},
      {"idle_ttl_ms 999", policy({tier()}, "\"idle_ttl_ms\": 999"),
       "policy.json: segment.idle_ttl_ms: 999 is not allowed (must be >= "
       "1000)"},
      {"idle_ttl_ms 0", policy({tier()}, "\"idle_ttl_ms\": 0"),
       "policy.json: segment.idle_ttl_ms: 0 is not allowed (must be >= 1000)"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(std::string(c.what) + ": " + c.json.substr(0, 300));
    EXPECT_NE(error_of(c.json).find(c.expect), std::string::npos)
        << "message: " << error_of(c.json) << "\nwanted: " << c.expect;
  }
}

// Errors found by flatbuffers' parser (or our kind check) carry the line and
// the field path.
TEST(Policy, RefusesWhatTheSchemaForbids) {
  const std::vector<BadCase> cases = {
      {"unknown top-level field", R"({"tiers": [], "bogus": 1})",
       "policy.json:1: bogus: unknown field: bogus"},
      {"unknown tier field",
       "{\"tiers\": [\n" + tier("\"t\"", "1", "1", "1", "\"limt\": 2") + "]}",
       "policy.json:2: tiers[0].limt: unknown field: limt"},
      {"unknown segment field", policy({tier()}, "\"max_key\": 1"),
       "policy.json:1: segment.max_key: unknown field: max_key"},
      {"limit as string", policy({tier("\"t\"", "\"5\"")}),
       "policy.json:1: tiers[0].limit: expected a number, got a string"},
      {"limit as word", policy({tier("\"t\"", "\"abc\"")}),
       "policy.json:1: tiers[0].limit: expected a number, got a string"},
      {"limit as bool", policy({tier("\"t\"", "true")}),
       "policy.json:1: tiers[0].limit: expected a number, got a bool"},
      {"limit fractional", policy({tier("\"t\"", "1.5")}),
       "policy.json:1: tiers[0].limit: 1.5 is not an integer in 0..4294967295"},
      {"limit negative", policy({tier("\"t\"", "-1")}),
       "policy.json:1: tiers[0].limit: -1 is not an integer in 0..4294967295"},
      {"limit > uint32", policy({tier("\"t\"", "4294967296")}),
       "policy.json:1: tiers[0].limit: 4294967296 is not an integer in "
       "0..4294967295"},
      {"limit hex", policy({tier("\"t\"", "0x10")}),
       "policy.json:1: tiers[0].limit: 0x10 is not an integer"},
      {"limit null", policy({tier("\"t\"", "null")}),
       "policy.json:1: tiers[0].limit: null is not an integer"},
      {"window_ms > uint64",
       policy({tier("\"t\"", "1", "18446744073709551616")}),
       "policy.json:1: tiers[0].window_ms: 18446744073709551616 is not an "
       "integer in "
       "0..18446744073709551615"},
      {"escaped key hides a quoted number",
       policy({tier("\"t\"", "", "1", "1", "\"lim\\u0069t\": \"5\"")}),
       "policy.json:1: tiers[0]: escape sequences in field names are not "
       "allowed"},
      {"revenue as string",
       policy(
           {tier("\"t\"", "1", "1", "1", "\"revenue_per_request\": \"nan\"")}),
       "policy.json:1: tiers[0].revenue_per_request: expected a number, got a "
       "string"},
      {"adaptive as number",
       policy({tier("\"t\"", "1", "1", "1", "\"adaptive\": 1")}),
       "policy.json:1: tiers[0].adaptive: expected true or false"},
      {"name as number", policy({tier("5")}), "policy.json:1: tiers[0].name: "},
      {"tiers as object", R"({"tiers": {}})", "policy.json:1: tiers: "},
      {"segment as array", R"({"segment": [], "tiers": []})",
       "policy.json:1: segment: "},
      {"field twice", policy({tier("\"t\"", "1", "1", "1", "\"limit\": 2")}),
       "field set more than once: limit"},
      {"trailing comma",
       policy({tier("\"t\"", "1", "1", "1", "\"adaptive\": true,")}),
       "policy.json:1: tiers[0]: "},
      {"unquoted key", R"({tiers: []})", "policy.json:1: "},
      {"schema text in JSON", R"({"tiers": []} root_type Tier;)",
       "policy.json:1: "},
      {"two objects", "{\"tiers\": []}\n{}", "policy.json:2: "},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(std::string(c.what) + ": " + c.json);
    EXPECT_NE(error_of(c.json).find(c.expect), std::string::npos)
        << "message: " << error_of(c.json) << "\nwanted: " << c.expect;
  }
}

TEST(Policy, MissingFileIsNamed) {
  const std::string path = "/nonexistent/sluice/policy.json";
  EXPECT_EQ(error_of_file(path),
            path + ": cannot open: No such file or directory");
}

TEST(Policy, DirectoryIsRefused) {
  const TempFile f("");
  const std::string dir =
      std::filesystem::path(f.path()).parent_path().string();
  EXPECT_NE(error_of_file(dir).find(dir + ": cannot read: "),
            std::string::npos);
}

TEST(Policy, EmptyFileIsRefused) {
  const TempFile f("");
  EXPECT_NE(error_of_file(f.path()).find(f.path() + ":1: "), std::string::npos);
  EXPECT_NE(error_of("  \n ").find("policy.json:2: "), std::string::npos);
}

TEST(Policy, GarbageIsRefused) {
  const TempFile f(
      "\x7f"
      "ELF\x01\x02garbage\xff\xfe");
  EXPECT_NE(error_of_file(f.path()).find(f.path() + ":1: "), std::string::npos);
  EXPECT_NE(error_of("not json at all").find("policy.json:1: "),
            std::string::npos);
  EXPECT_NE(error_of("[1, 2, 3]").find("policy.json:1: "), std::string::npos);
  // ParseJson stops at NUL; what follows must not be silently ignored.
  EXPECT_NE(
      error_of(std::string(policy({tier()})) + std::string(1, '\0') + "junk")
          .find("policy.json: contains a NUL byte"),
      std::string::npos);
}

// Big inputs must be refused (or parsed), never crash or hang.
TEST(Policy, TenMegabyteFilesDoNotCrash) {
  const size_t ten_mb = 10u << 20;
  {  // one huge name
    const TempFile f(policy({tier("\"" + std::string(ten_mb, 'x') + "\"")}));
    EXPECT_NE(error_of_file(f.path()).find(
                  "tiers[0].name: 10485760 bytes is not allowed"),
              std::string::npos);
  }
  {  // very many tiers
    std::string json = "{\"tiers\": [";
    for (size_t i = 0; json.size() < ten_mb; ++i)
      json += (i ? "," : "") + tier("\"t" + std::to_string(i) + "\"");
    const TempFile f(json + "]}");
    EXPECT_NE(error_of_file(f.path()).find("tiers: "), std::string::npos);
  }
  {  // deep nesting
    const TempFile f("{\"tiers\": " + std::string(ten_mb, '['));
    EXPECT_NE(error_of_file(f.path()).find(f.path() + ":1: "),
              std::string::npos);
  }
  {  // unbalanced braces
    const TempFile f(std::string(ten_mb, '{'));
    EXPECT_NE(error_of_file(f.path()).find(f.path() + ":1: "),
              std::string::npos);
  }
}

TEST(Policy, OversizedFileIsRefusedBeforeParsing) {
  const TempFile f(std::string((16u << 20) + 1, ' '));
  EXPECT_EQ(error_of_file(f.path()),
            f.path() + ": larger than 16 MiB, not a policy file");
}

}  // namespace

namespace {

std::string segment_policy(const std::string& segment,
                           const std::vector<std::string>& max_limits) {
  std::vector<std::string> tiers;
  for (size_t i = 0; i < max_limits.size(); ++i)
    tiers.push_back(tier("\"t" + std::to_string(i) + "\"", "1", "1000",
                         max_limits[i]));
  return policy(tiers, segment);
}

}  // namespace

// Every field in range, yet 2^24 keys x max_limit 2^20 is a 176 TB segment:
// tmpfs maps it sparsely and SIGBUSes as it fills. The total is capped.
TEST(Policy, RefusesAStateSegmentLargerThanOneTebibyte) {
  const std::string huge =
      error_of(segment_policy("\"max_keys\": 16777216", {"1048576"}));
  // 34944 header + 20971520 slots x (128 entry + 8 MiB ring).
  EXPECT_NE(huge.find("policy.json: segment.max_keys: 16777216 keys with the "
                      "tiers' max_limit (largest tiers[0].max_limit 1048576) "
                      "need a state segment of 175924544833664 bytes"),
            std::string::npos)
      << huge;
  EXPECT_NE(huge.find("more than the 1099511627776 (1 TiB) allowed"),
            std::string::npos)
      << huge;

  // The largest tier is the one named.
  const std::string second = error_of(
      segment_policy("\"max_keys\": 200000", {"4", "1048576", "2"}));
  EXPECT_NE(second.find("largest tiers[1].max_limit 1048576"),
            std::string::npos)
      << second;

  // Either side of the cap: 125000 slots x 8 MiB fit, 137500 do not.
  const PolicySpec under =
      parse_policy_json(segment_policy("\"max_keys\": 100000", {"1048576"}));
  EXPECT_LE(sluice::policy::state_segment_bytes(under),
            sluice::policy::kMaxStateSegmentBytes);
  EXPECT_NE(error_of(segment_policy("\"max_keys\": 110000", {"1048576"}))
                .find("segment.max_keys: 110000 keys"),
            std::string::npos);
  // Many tiers add up, though each alone fits.
  const std::vector<std::string> five(5, "262144");
  EXPECT_NE(error_of(segment_policy("\"max_keys\": 110000", five))
                .find("segment.max_keys: 110000 keys"),
            std::string::npos);
}

TEST(Policy, StateSegmentBytesFollowsTheLayout) {
  // One tier, 64-byte keys: header, 16 slots (the minimum) x 128-byte
  // entries, 16 x 4 ring slots of 8 bytes.
  const PolicySpec p =
      parse_policy_json(segment_policy("\"max_keys\": 4", {"4"}));
  EXPECT_EQ(sluice::policy::state_segment_bytes(p), 34944u + 16 * 128 + 16 * 4 * 8);
}

// The scalar rules hold for the elements of integer arrays too: flatbuffers
// would coerce ["1000"] and [0x10] there as it does for a scalar field.
TEST(Policy, RefusesWronglyKindedArrayElementsNamingTheIndex) {
  auto gov = [](const std::string& body) {
    return "{\"tiers\": [" + tier() + "], \"governance\": {" + body + "}}";
  };
  const std::vector<BadCase> cases = {
      {"quoted uid", gov(R"("approvers": ["1000"])"),
       "policy.json:1: governance.approvers[0]: expected a number, got a "
       "string"},
      {"hex uid", gov(R"("approvers": [0x10])"),
       "policy.json:1: governance.approvers[0]: 0x10 is not an integer in "
       "0..4294967295"},
      {"bool gid", gov(R"("approver_gids": [1000, true])"),
       "policy.json:1: governance.approver_gids[1]: expected a number, got a "
       "bool"},
      {"negative gid", gov(R"("approver_gids": [1, 2, -1])"),
       "policy.json:1: governance.approver_gids[2]: -1 is not an integer in "
       "0..4294967295"},
      {"uid > uint32", gov(R"("approvers": [4294967296])"),
       "policy.json:1: governance.approvers[0]: 4294967296 is not an integer"},
      {"fractional uid", gov(R"("approvers": [1.5])"),
       "policy.json:1: governance.approvers[0]: 1.5 is not an integer"},
      {"null uid", gov(R"("approvers": [null])"),
       "policy.json:1: governance.approvers[0]: null is not an integer"},
      {"on a later line, after a comment",
       gov("\"approvers\": [\n  0, // root\n  \"1000\"]"),
       "policy.json:3: governance.approvers[1]: expected a number, got a "
       "string"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(std::string(c.what) + ": " + c.json);
    EXPECT_NE(error_of(c.json).find(c.expect), std::string::npos)
        << "message: " << error_of(c.json) << "\nwanted: " << c.expect;
  }
  const PolicySpec ok = parse_policy_json(
      gov("\"approvers\": [ 1000 , /* ops */ 0 ], \"approver_gids\": []"));
  EXPECT_EQ(ok.governance.approvers, (std::vector<uint32_t>{1000, 0}));
  EXPECT_TRUE(ok.governance.approver_gids.empty());
}

// 1e300 dollars would overflow the uint64 micro-dollars clients are given.
TEST(Policy, RefusesARevenuePerRequestAboveAMillionDollars) {
  for (const char* v : {"1e300", "1000000.5", "1e7"}) {
    const std::string e = error_of(policy(
        {tier("\"t\"", "1", "1", "1", std::string("\"revenue_per_request\": ") + v)}));
    EXPECT_NE(e.find("policy.json: tiers[0].revenue_per_request: "),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("is not allowed (must be at most 1000000 dollars per "
                     "request)"),
              std::string::npos)
        << e;
  }
}

// Reclaim multiplies the TTL into int64 nanoseconds: UINT64_MAX became -1e6.
TEST(Policy, RefusesAnIdleTtlAboveTenYears) {
  for (const char* v : {"315360000001", "9223372036855", "18446744073709551615"}) {
    const std::string e =
        error_of(policy({tier()}, std::string("\"idle_ttl_ms\": ") + v));
    EXPECT_NE(e.find(std::string("policy.json: segment.idle_ttl_ms: ") + v +
                     " is not allowed (must be at most 315360000000, 10 "
                     "years)"),
              std::string::npos)
        << e;
  }
}

// segment.reserve_memory: the whole state at creation (default), or as touched.
TEST(Policy, ReserveMemoryDefaultsOnParsesOffRoundTripsAndRefusesAWrongType) {
  EXPECT_TRUE(default_policy().segment.reserve_memory);
  EXPECT_TRUE(layout_of(default_policy()).reserve_memory);
  const PolicySpec off = parse_policy_json(policy({tier()}, "\"reserve_memory\": false"));
  EXPECT_FALSE(off.segment.reserve_memory);
  EXPECT_FALSE(layout_of(off).reserve_memory);
  EXPECT_EQ(parse_policy_json(to_json(off)), off);
  const std::string e = error_of(policy({tier()}, "\"reserve_memory\": \"no\""));
  EXPECT_NE(e.find("reserve_memory"), std::string::npos) << e;
}
