// Runs a function with this process's stderr sent to a file and returns what it printed:
// the library logs through stderr, and tests check those lines themselves.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace ddp::test {

template <typename Fn>
std::string capture_stderr(Fn fn) {
  std::fflush(stderr);
  // One file per process: ranks of a multi-process test share the working directory.
  const std::string path = "captured_stderr." + std::to_string(getpid()) + ".txt";
  const int saved = dup(STDERR_FILENO);
  FILE* file = std::fopen(path.c_str(), "w");
  dup2(fileno(file), STDERR_FILENO);
  try {
    fn();
  } catch (...) {
    std::fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    std::fclose(file);
    std::remove(path.c_str());
    throw;
  }
  std::fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  std::fclose(file);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::remove(path.c_str());
  return text.str();
}

} // namespace ddp::test
