#pragma once
// The subcommands. Each prints to `out` and returns the process exit code; errors are thrown
// (c10::Error, std::exception) and turned into one line by main.

#include "measure.h"

#include <ostream>
#include <string>

namespace attnkit::cli {

/// `attnkit list`: one line per mechanism with its paper.
int run_list(std::ostream& out);

/// `attnkit run NAME`: builds one mechanism and prints its shapes, size, timings and cache.
int run_one(const std::string& name, const MeasureOptions& options, std::ostream& out);

/// `attnkit tour`: every mechanism on one shape, as one table. A mechanism that throws gets an
/// "error" row; the return code is then 2 and `error` holds one line naming the failures.
int run_tour(const MeasureOptions& options, std::ostream& out, std::string& error);

}  // namespace attnkit::cli
