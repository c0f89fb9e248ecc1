// serve::EngineService (continuous batching over the scheduler): every request gets the tokens
// Engine::generate gives it alone, whatever else runs beside it — with adapters mixed, shared prompt
// prefixes, a KV cache small enough to force preemption, cancellation, an adapter unloaded while in
// use, and drain. The exactness checks run a tiny golden fixture (qwen3-ct-w4g64-asym, two
// adapters) on the scalar reference kernels, which compute every row independently of the others,
// so "the same tokens" is exact; the bundled demo runs on the fast kernels.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>

#include "engine/engine.h"
#include "serve/engine_service.h"

namespace nb::serve {
namespace {

const std::string kDemo = std::string(NIBBLE_SOURCE_DIR) + "/models/demo";
const std::string kTiny = std::string(NIBBLE_SOURCE_DIR) + "/tests/data/models/qwen3-ct-w4g64-asym";

// The model and its two adapters: the tiny fixture (vocab 176) or the bundled demo (vocab 4096).
struct Model {
  std::string dir;
  std::string a, b;  // adapter names (directories under dir/adapters)
  int32_t vocab;
};
const Model kTinyModel{kTiny, "attn_mlp", "qv16", 176};
const Model kDemoModel{kDemo, "kjv", "devil", 4096};

// Collects one request's stream.
class Collector : public RequestObserver {
 public:
  void on_tokens(const std::vector<TokenOut>& tokens) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const TokenOut& t : tokens) ids_.push_back(t.id);
    cv_.notify_all();
  }
  void on_finish(const std::string& reason, const std::string& error) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++finishes_;
    reason_ = reason;
    error_ = error;
    cv_.notify_all();
  }
  // Waits for the finish (at most `seconds`); false on timeout.
  bool wait(double seconds = 120) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return finishes_ > 0; });
  }
  bool wait_tokens(size_t n, double seconds = 120) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return ids_.size() >= n || finishes_ > 0; });
  }
  std::vector<int32_t> ids() {
    std::lock_guard<std::mutex> lock(mu_);
    return ids_;
  }
  std::string reason() {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_ == "error" ? "error: " + error_ : reason_;
  }
  int finishes() {
    std::lock_guard<std::mutex> lock(mu_);
    return finishes_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> ids_;
  int finishes_ = 0;
  std::string reason_, error_;
};

EngineServiceOptions options(const Model& m, bool reference, int64_t kv_tokens = 0) {
  EngineServiceOptions o;
  o.engine.model_dir = m.dir;
  o.engine.verbose = false;
  o.engine.reference_kernels = reference;
  o.engine.max_kv_tokens = kv_tokens;
  o.engine.max_loras = 2;
  o.loras = {{m.a, m.dir + "/adapters/" + m.a}, {m.b, m.dir + "/adapters/" + m.b}};
  return o;
}

struct Case {
  std::vector<int32_t> prompt;
  std::string adapter;
  int max_tokens = 12;
};

// Random prompts; some share a 40-token prefix, adapters mixed; `gen` bounds the generated tokens.
std::vector<Case> cases(const Model& m, int n, uint32_t seed, int min_gen = 4, int max_gen = 17) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(3, m.vocab - 1);
  std::vector<int32_t> shared(40);
  for (int32_t& t : shared) t = tok(rng);
  const std::string adapters[] = {"", m.a, m.b};
  std::vector<Case> out;
  for (int i = 0; i < n; ++i) {
    Case c;
    if (i % 3 == 0) c.prompt = shared;
    const int extra = 1 + static_cast<int>(rng() % 30);
    for (int j = 0; j < extra; ++j) c.prompt.push_back(tok(rng));
    c.adapter = adapters[rng() % 3];
    c.max_tokens = min_gen + static_cast<int>(rng() % static_cast<uint32_t>(max_gen - min_gen + 1));
    out.push_back(std::move(c));
  }
  return out;
}

// Each case alone through Engine::generate (greedy, EOS ignored).
std::vector<std::vector<int32_t>> solo(const Model& m, const std::vector<Case>& cs, bool reference) {
  engine::EngineOptions o = options(m, reference).engine;
  auto e = engine::Engine::create(o);
  EXPECT_TRUE(e.is_ok()) << e.status().to_string();
  for (const std::string& a : {m.a, m.b}) EXPECT_TRUE((*e)->load_adapter(a, m.dir + "/adapters/" + a).is_ok());
  std::vector<std::vector<int32_t>> out;
  for (const Case& c : cs) {
    engine::GenerationRequest r;
    r.prompt = c.prompt;
    r.adapter = c.adapter;
    r.max_tokens = c.max_tokens;
    auto g = (*e)->generate({r});
    EXPECT_TRUE(g.is_ok()) << g.status().to_string();
    out.push_back(g.is_ok() ? (*g)[0].tokens : std::vector<int32_t>{});
  }
  return out;
}

GenerateRequest request(const Case& c) {
  GenerateRequest r;
  r.prompt = c.prompt;
  r.adapter = c.adapter;
  r.max_tokens = c.max_tokens;
  r.sampling.temperature = 0;
  return r;
}

void expect_idle(Service& s) {
  for (int i = 0; i < 200; ++i) {
    ServiceStats st = s.stats();
    if (st.running == 0 && st.waiting == 0 && st.kv_blocks_used == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ServiceStats st = s.stats();
  ADD_FAILURE() << "not idle: running " << st.running << " waiting " << st.waiting << " blocks " << st.kv_blocks_used;
}

// Submits `cs` (in `waves`: each wave after the previous one finished), checks every stream against
// its solo greedy run, returns the service's stats at the end.
ServiceStats run_crowd(const Model& m, const std::vector<std::vector<Case>>& waves, int64_t kv_tokens) {
  auto svc = make_engine_service(options(m, true, kv_tokens));
  EXPECT_TRUE(svc.is_ok()) << svc.status().to_string();
  if (!svc.is_ok()) return {};
  for (const std::vector<Case>& cs : waves) {
    const auto want = solo(m, cs, true);
    std::vector<std::shared_ptr<Collector>> got;
    for (const Case& c : cs) {
      got.push_back(std::make_shared<Collector>());
      auto id = (*svc)->submit(request(c), got.back());
      EXPECT_TRUE(id.is_ok()) << id.status().to_string();
    }
    for (size_t i = 0; i < cs.size(); ++i) {
      EXPECT_TRUE(got[i]->wait()) << "request " << i << " did not finish";
      EXPECT_EQ(got[i]->reason(), "length") << i;
      EXPECT_EQ(got[i]->ids(), want[i]) << "request " << i << " (adapter '" << cs[i].adapter << "')";
      EXPECT_EQ(got[i]->finishes(), 1);
    }
  }
  ServiceStats st = (*svc)->stats();
  expect_idle(**svc);
  (*svc)->drain();
  return st;
}

TEST(EngineService, CrowdEqualsSoloGreedy) { run_crowd(kTinyModel, {cases(kTinyModel, 12, 19u)}, 0); }

TEST(EngineService, PrefixCacheHitsGiveTheSameTokens) {
  // Blocks become shareable once computed: the second wave reuses the first wave's 40-token prefix
  // (two full blocks of 16) under the same adapter, and not under another one.
  std::vector<Case> cs = cases(kTinyModel, 3, 23u);  // cs[0] has the shared prefix
  std::vector<int32_t> prefix(cs[0].prompt.begin(), cs[0].prompt.begin() + 40);
  Case a{prefix, kTinyModel.a, 6}, b{prefix, kTinyModel.a, 7}, c{prefix, kTinyModel.b, 7};
  a.prompt.push_back(9);
  b.prompt.insert(b.prompt.end(), {11, 12, 13});
  c.prompt.push_back(9);
  ServiceStats st = run_crowd(kTinyModel, {{a}, {b, c}}, 0);
  EXPECT_EQ(st.prefix_cache_hits, 32) << "b reuses a's two full prefix blocks; c (another adapter) none";
  EXPECT_GE(st.prefix_cache_queries, 32 + 32 + 32);
}

TEST(EngineService, PreemptionLosesNothing) {
  // Short prompts that each generate 40-60 tokens, 6 at once, in a cache of 12 blocks of 16: all
  // start, then their growth forces preemption (recompute) and they must still finish exactly.
  std::vector<Case> cs = cases(kTinyModel, 6, 29u, 40, 60);
  for (Case& c : cs) c.prompt.resize(std::min<size_t>(c.prompt.size(), 12));
  ServiceStats st = run_crowd(kTinyModel, {cs}, 12 * 16);
  EXPECT_GT(st.preemptions, 0) << "the cache was sized to force preemption";
}

TEST(EngineService, EvictedAdaptersComeBackFromDisk) {
  // Four adapter names over two directories, at most two in host memory: requests whose adapter
  // was evicted wait while the loader thread reads it again, and still get exactly their tokens.
  const Model& m = kTinyModel;
  EngineServiceOptions o = options(m, true);
  o.engine.max_cpu_loras = 2;
  o.loras.push_back({"a2", m.dir + "/adapters/" + m.a});
  o.loras.push_back({"b2", m.dir + "/adapters/" + m.b});
  auto svc = make_engine_service(o);
  ASSERT_TRUE(svc.is_ok()) << svc.status().to_string();
  std::vector<Case> cs = cases(m, 16, 31u, 3, 8);
  const std::string names[] = {m.a, m.b, "a2", "b2"};
  std::vector<Case> solo_cases = cs;
  for (size_t i = 0; i < cs.size(); ++i) {
    cs[i].adapter = names[i % 4];
    solo_cases[i].adapter = i % 2 == 0 ? m.a : m.b;  // same directories
  }
  const auto want = solo(m, solo_cases, true);
  std::vector<std::shared_ptr<Collector>> got;
  for (const Case& c : cs) {
    got.push_back(std::make_shared<Collector>());
    ASSERT_TRUE((*svc)->submit(request(c), got.back()).is_ok());
  }
  for (size_t i = 0; i < cs.size(); ++i) {
    ASSERT_TRUE(got[i]->wait());
    EXPECT_EQ(got[i]->reason(), "length");
    EXPECT_EQ(got[i]->ids(), want[i]) << "request " << i << " adapter " << cs[i].adapter;
  }
  int64_t loads = 0, evictions = 0;
  for (const AdapterInfo& a : (*svc)->adapters()) {
    loads += a.loads;
    evictions += a.evictions;
  }
  EXPECT_GT(evictions, 0) << "four adapters in a cache of two";
  EXPECT_GT(loads, 4) << "evicted adapters were read again";
  expect_idle(**svc);
}

TEST(EngineService, FastKernelsCrowdOnTheDemo) {
  // The fast kernels round differently with the batch's row count: near-ties may flip a greedy
  // token, so require most sequences to be identical.
  const std::vector<Case> cs = cases(kDemoModel, 8, 99u);
  const auto want = solo(kDemoModel, cs, false);
  auto svc = make_engine_service(options(kDemoModel, false));
  ASSERT_TRUE(svc.is_ok()) << svc.status().to_string();
  std::vector<std::shared_ptr<Collector>> got;
  for (const Case& c : cs) {
    got.push_back(std::make_shared<Collector>());
    ASSERT_TRUE((*svc)->submit(request(c), got.back()).is_ok());
  }
  int equal = 0;
  for (size_t i = 0; i < cs.size(); ++i) {
    ASSERT_TRUE(got[i]->wait());
    equal += got[i]->ids() == want[i];
  }
  EXPECT_GE(equal, 7) << "near-ties may flip a greedy token when the batch changes the summation order";
  expect_idle(**svc);
}

TEST(EngineService, CancelFreesAtOnce) {
  auto svc = make_engine_service(options(kDemoModel, false));
  ASSERT_TRUE(svc.is_ok()) << svc.status().to_string();
  Case c{std::vector<int32_t>(30, 17), "kjv", 400};
  auto col = std::make_shared<Collector>();
  auto id = (*svc)->submit(request(c), col);
  ASSERT_TRUE(id.is_ok());
  ASSERT_TRUE(col->wait_tokens(3));
  (*svc)->cancel(*id);
  ASSERT_TRUE(col->wait());
  EXPECT_EQ(col->reason(), "abort");
  EXPECT_LT(col->ids().size(), 400u);
  expect_idle(**svc);
  (*svc)->cancel(*id);  // a finished id is ignored
  (*svc)->cancel(12345);
  EXPECT_EQ(col->finishes(), 1);
}

TEST(EngineService, StopIdEndsWithStop) {
  const std::vector<Case> cs = {{std::vector<int32_t>{5, 6, 7, 8, 9}, "qv16", 10}};
  const auto want = solo(kTinyModel, cs, true);
  ASSERT_GE(want[0].size(), 4u);
  auto svc = make_engine_service(options(kTinyModel, true));
  ASSERT_TRUE(svc.is_ok());
  GenerateRequest r = request(cs[0]);
  r.stop_ids = {want[0][2]};
  auto col = std::make_shared<Collector>();
  ASSERT_TRUE((*svc)->submit(r, col).is_ok());
  ASSERT_TRUE(col->wait());
  EXPECT_EQ(col->reason(), "stop");
  // Ends at the first occurrence of the stop id, which is emitted.
  const auto first = std::find(want[0].begin(), want[0].end(), want[0][2]);
  EXPECT_EQ(col->ids(), std::vector<int32_t>(want[0].begin(), first + 1));
}

TEST(EngineService, UnloadWhileInUseLetsRequestsFinish) {
  auto svc = make_engine_service(options(kDemoModel, false));
  ASSERT_TRUE(svc.is_ok());
  Case c{std::vector<int32_t>(20, 33), "kjv", 60};
  auto col = std::make_shared<Collector>();
  ASSERT_TRUE((*svc)->submit(request(c), col).is_ok());
  ASSERT_TRUE(col->wait_tokens(2));
  ASSERT_TRUE((*svc)->unload_adapter("kjv").is_ok());
  auto refused = (*svc)->submit(request(c), std::make_shared<Collector>());
  ASSERT_FALSE(refused.is_ok());
  EXPECT_EQ(refused.status().code(), ErrorCode::kNotFound) << refused.status().to_string();
  EXPECT_FALSE((*svc)->unload_adapter("kjv").is_ok()) << "already being unloaded";
  ASSERT_TRUE(col->wait());
  EXPECT_EQ(col->reason(), "length");
  EXPECT_EQ(col->ids().size(), 60u);
  for (int i = 0; i < 200; ++i) {
    bool gone = true;
    for (const AdapterInfo& a : (*svc)->adapters()) gone &= a.name != "kjv";
    if (gone) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const AdapterInfo& a : (*svc)->adapters()) EXPECT_NE(a.name, "kjv");
  // And it can come back under the same name.
  Status s = (*svc)->load_adapter("kjv", kDemo + "/adapters/kjv");
  for (int i = 0; i < 100 && !s.is_ok(); ++i) {  // the loop thread removes it between steps
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    s = (*svc)->load_adapter("kjv", kDemo + "/adapters/kjv");
  }
  EXPECT_TRUE(s.is_ok()) << s.to_string();
}

TEST(EngineService, ErrorsNameTheProblem) {
  auto svc = make_engine_service(options(kDemoModel, false));
  ASSERT_TRUE(svc.is_ok());
  const ModelInfo info = (*svc)->model_info();
  auto col = std::make_shared<Collector>();
  GenerateRequest r;
  r.prompt = std::vector<int32_t>(static_cast<size_t>(info.max_model_len), 5);
  r.max_tokens = 1;
  auto res = (*svc)->submit(r, col);
  ASSERT_FALSE(res.is_ok());
  EXPECT_NE(res.status().message().find(std::to_string(info.max_model_len)), std::string::npos) << res.status().to_string();
  r.prompt = {1, 2, 3};
  r.adapter = "nope";
  res = (*svc)->submit(r, col);
  ASSERT_FALSE(res.is_ok());
  EXPECT_EQ(res.status().code(), ErrorCode::kNotFound);
  r.adapter = "";
  r.sampling.temperature = std::nanf("");
  EXPECT_FALSE((*svc)->submit(r, col).is_ok());
  r.sampling.temperature = 1;
  r.prompt = {static_cast<int32_t>(info.vocab_size)};
  EXPECT_FALSE((*svc)->submit(r, col).is_ok());
  EXPECT_FALSE((*svc)->load_adapter("kjv", kDemo + "/adapters/kjv").is_ok()) << "duplicate name";
  EXPECT_FALSE((*svc)->load_adapter("x", kDemo + "/nothing-here").is_ok());
  EXPECT_EQ(col->finishes(), 0) << "a refused request is never reported";
}

TEST(EngineService, DrainFinishesEverything) {
  auto svc = make_engine_service(options(kDemoModel, false));
  ASSERT_TRUE(svc.is_ok());
  std::vector<std::shared_ptr<Collector>> got;
  for (const Case& c : cases(kDemoModel, 6, 3u)) {
    got.push_back(std::make_shared<Collector>());
    ASSERT_TRUE((*svc)->submit(request(c), got.back()).is_ok());
  }
  (*svc)->drain();
  for (auto& g : got) {
    EXPECT_EQ(g->finishes(), 1);
    EXPECT_EQ(g->reason(), "length");
  }
  auto late = (*svc)->submit(request(cases(kDemoModel, 1, 4u)[0]), std::make_shared<Collector>());
  EXPECT_FALSE(late.is_ok());
  EXPECT_EQ(late.status().code(), ErrorCode::kUnavailable);
  (*svc)->drain();  // idempotent
}

}  // namespace
}  // namespace nb::serve
