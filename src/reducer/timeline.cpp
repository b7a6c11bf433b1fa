#include <ddp/timeline.h>

#include <fmt/format.h>

#include <cstdio>
#include <memory>

#include <ddp/error.h>

namespace ddp {

const char* Timeline::kind_name(Kind kind) {
  switch (kind) {
    case Kind::kHook: return "hook";
    case Kind::kBucketReady: return "bucket_ready";
    case Kind::kCollective: return "allreduce";
    case Kind::kUsedFlags: return "used_flags";
    case Kind::kFinalize: return "finalize";
    case Kind::kFinalizeWait: return "finalize_wait";
    case Kind::kBackward: return "backward";
    case Kind::kHookCollective: return "hook_collective";
    case Kind::kAutotuneCandidate: return "autotune_candidate";
    case Kind::kAutotuneChoice: return "autotune_choice";
    case Kind::kOptimizerStep: return "optimizer_step";
  }
  return "unknown";
}

namespace {

// JSON string escaping for parameter names (quotes and backslashes are legal in them).
std::string escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<int>(c));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Thread ids group the events into rows in Perfetto: the reducer's own work on one row,
// the communication on another, so the overlap is visible at a glance.
int thread_of(Timeline::Kind kind) {
  switch (kind) {
    case Timeline::Kind::kCollective:
    case Timeline::Kind::kHookCollective:
    case Timeline::Kind::kUsedFlags: return 2;
    case Timeline::Kind::kBackward:
    case Timeline::Kind::kAutotuneCandidate: // spans the backward passes it timed
    case Timeline::Kind::kAutotuneChoice: return 0;
    default: return 1;
  }
}

} // namespace

void Timeline::write_chrome_trace(const std::string& path, int rank, const std::vector<std::string>& parameter_names,
                                  Clock::time_point origin) const {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "w"), &std::fclose);
  if (!file) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] cannot write the timeline to '{}': check that the "
                                           "directory exists and is writable (DDP_TIMELINE / Options::timeline_path)",
                                           rank, path));
  }
  auto us = [origin](Clock::time_point t) {
    return std::chrono::duration<double, std::micro>(t - origin).count();
  };
  std::string out = "[\n";
  out += fmt::format(R"({{"name":"process_name","ph":"M","pid":{0},"tid":0,"args":{{"name":"rank {0}"}}}})", rank);
  const char* thread_names[] = {"backward", "reducer", "communication"};
  for (int t = 0; t < 3; ++t) {
    out += fmt::format(",\n{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":\"{}\"}}}}",
                       rank, t, thread_names[t]);
  }
  for (const Event& e : events_) {
    std::string name;
    if (e.kind == Kind::kHook) {
      name = e.index >= 0 && static_cast<size_t>(e.index) < parameter_names.size()
                 ? "hook " + escape(parameter_names[e.index])
                 : fmt::format("hook #{}", e.index);
    } else if (e.kind == Kind::kBucketReady || e.kind == Kind::kCollective || e.kind == Kind::kOptimizerStep) {
      name = fmt::format("{} bucket {}", kind_name(e.kind), e.index);
    } else if (e.kind == Kind::kHookCollective) {
      name = fmt::format("{} bucket {}", e.op ? e.op : "collective", e.index);
    } else if (e.kind == Kind::kAutotuneCandidate) {
      name = fmt::format("autotune bucket_cap_mb={:g}: slowest rank's median backward {:.3f} ms",
                         static_cast<double>(e.bytes) / 1048576.0, static_cast<double>(e.value) / 1e6);
    } else if (e.kind == Kind::kAutotuneChoice) {
      name = fmt::format("autotune chose bucket_cap_mb={:g}", static_cast<double>(e.bytes) / 1048576.0);
    } else {
      name = kind_name(e.kind);
    }
    if (e.kind == Kind::kAutotuneCandidate || e.kind == Kind::kAutotuneChoice) {
      // The candidate's cap and its timing in the args too, for a script reading the trace.
      const std::string args = fmt::format("\"iteration\":{},\"candidate\":{},\"bucket_cap_mb\":{:g}{}", e.iteration,
                                           e.index, static_cast<double>(e.bytes) / 1048576.0,
                                           e.kind == Kind::kAutotuneCandidate
                                               ? fmt::format(",\"median_ms\":{:.6f}", static_cast<double>(e.value) / 1e6)
                                               : "");
      if (e.kind == Kind::kAutotuneChoice) {
        out += fmt::format(",\n{{\"name\":\"{}\",\"cat\":\"{}\",\"ph\":\"i\",\"s\":\"p\",\"ts\":{:.3f},\"pid\":{},"
                           "\"tid\":{},\"args\":{{{}}}}}",
                           name, kind_name(e.kind), us(e.start), rank, thread_of(e.kind), args);
      } else {
        out += fmt::format(",\n{{\"name\":\"{}\",\"cat\":\"{}\",\"ph\":\"X\",\"ts\":{:.3f},\"dur\":{:.3f},\"pid\":{},"
                           "\"tid\":{},\"args\":{{{}}}}}",
                           name, kind_name(e.kind), us(e.start), us(e.end) - us(e.start), rank, thread_of(e.kind), args);
      }
    } else if (e.kind == Kind::kBucketReady) {
      out += fmt::format(",\n{{\"name\":\"{}\",\"cat\":\"{}\",\"ph\":\"i\",\"s\":\"t\",\"ts\":{:.3f},\"pid\":{},"
                         "\"tid\":{},\"args\":{{\"iteration\":{}}}}}",
                         name, kind_name(e.kind), us(e.start), rank, thread_of(e.kind), e.iteration);
    } else {
      const bool collective = e.kind == Kind::kCollective || e.kind == Kind::kHookCollective;
      const std::string bytes = collective ? fmt::format(",\"bytes\":{}", e.bytes) : "";
      out += fmt::format(",\n{{\"name\":\"{}\",\"cat\":\"{}\",\"ph\":\"X\",\"ts\":{:.3f},\"dur\":{:.3f},\"pid\":{},"
                         "\"tid\":{},\"args\":{{\"iteration\":{}{}}}}}",
                         name, kind_name(e.kind), us(e.start), us(e.end) - us(e.start), rank, thread_of(e.kind),
                         e.iteration, bytes);
    }
  }
  out += "\n]\n";
  if (std::fwrite(out.data(), 1, out.size(), file.get()) != out.size()) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] writing the timeline to '{}' failed (disk full?)", rank, path));
  }
}

} // namespace ddp
