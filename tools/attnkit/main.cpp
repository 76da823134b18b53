// attnkit: the command-line tool (list, run, tour, viz, bench, sparse-eval). Parses the
// arguments, sets the thread count, warns about a slow BLAS, runs one subcommand, and turns every
// error into one line on stderr and exit code 2.

#include "bench.h"
#include "blas_check.h"
#include "commands.h"
#include "measure.h"
#include "registry.h"
#include "sparse_eval.h"
#include "viz.h"

#include <torch/torch.h>

#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>
#include <string>
#include <thread>

namespace {

constexpr int kErrorExitCode = 2;

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

int fail(const std::string& message) {
  std::cerr << "attnkit: error: " << first_line(message) << std::endl;
  return kErrorExitCode;
}

/// Accepts a whole positive integer; CLI11's PositiveNumber prints its range as a 300-digit double.
const CLI::Validator kPositive(
    [](std::string& input) -> std::string {
      size_t used = 0;
      long long value = 0;
      try {
        value = std::stoll(input, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != input.size() || value < 1) {
        return "expected a positive integer, got '" + input + "'";
      }
      return "";
    },
    "POSITIVE");

/// The shape and timing options `run` and `tour` share.
struct ShapeArgs {
  int64_t batch_size = 2;
  int64_t seq_len = 256;
  int64_t dim = 256;
  int64_t num_heads = 8;
  int64_t num_kv_heads = 2;
  bool causal = true;
  std::string dtype = "float32";
  int repeats = 5;
};

/// The model and input shape: run, tour and viz.
void add_model_options(CLI::App* command, ShapeArgs& args) {
  command->add_option("--batch", args.batch_size, "Batch size")
      ->check(kPositive)
      ->capture_default_str();
  command->add_option("--seq", args.seq_len, "Sequence length")
      ->check(kPositive)
      ->capture_default_str();
  command->add_option("--dim", args.dim, "Model width")->check(kPositive)->capture_default_str();
  command->add_option("--heads", args.num_heads, "Query heads")
      ->check(kPositive)
      ->capture_default_str();
  command->add_option("--kv-heads", args.num_kv_heads, "Key/value heads (GQA-style mechanisms)")
      ->check(kPositive)
      ->capture_default_str();
  command->add_flag("--causal,!--no-causal", args.causal,
                    "Causal masking, needed for decoding (default: causal)");
}

/// The shape plus dtype and repetitions: run and tour.
void add_shape_options(CLI::App* command, ShapeArgs& args) {
  add_model_options(command, args);
  command->add_option("--dtype", args.dtype, "Parameter and input dtype")
      ->check(CLI::IsMember({"float32", "float64"}))
      ->capture_default_str();
  command->add_option("--repeats", args.repeats, "Timed repetitions; the median is reported")
      ->check(kPositive)
      ->capture_default_str();
}

attnkit::cli::MechanismConfig to_config(const ShapeArgs& args) {
  attnkit::cli::MechanismConfig config;
  config.dim = args.dim;
  config.num_heads = args.num_heads;
  config.num_kv_heads = args.num_kv_heads;
  config.causal = args.causal;
  config.seq_len = args.seq_len;
  return config;
}

attnkit::cli::MeasureOptions to_measure_options(const ShapeArgs& args, uint64_t seed) {
  attnkit::cli::MeasureOptions options;
  options.config = to_config(args);
  options.batch_size = args.batch_size;
  options.seq_len = args.seq_len;
  options.dtype = attnkit::cli::parse_dtype(args.dtype);
  options.repeats = args.repeats;
  options.seed = seed;
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"attnkit: Transformer attention mechanisms on LibTorch.", "attnkit"};
  app.require_subcommand(1);
  // Global options are accepted after the subcommand too: `attnkit tour --threads 1`.
  app.fallthrough();

  const unsigned cores = std::thread::hardware_concurrency();
  int threads = cores > 0 ? static_cast<int>(cores) : 1;
  uint64_t seed = 0;
  app.add_option("--threads", threads, "Intra-op threads (default: all cores)")
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--seed", seed, "Seed of the parameters and inputs")->capture_default_str();

  app.add_subcommand("list", "List every mechanism with its paper");

  ShapeArgs args;
  std::string name;
  CLI::App* run = app.add_subcommand(
      "run", "Build one mechanism; time forward and backward; measure its decode cache");
  run->add_option("name", name, "Mechanism name or class name (see `attnkit list`)")->required();
  add_shape_options(run, args);

  CLI::App* tour = app.add_subcommand("tour", "Every mechanism on one shape, as one table");
  add_shape_options(tour, args);

  ShapeArgs viz_args;
  viz_args.batch_size = 1;
  viz_args.seq_len = 64;
  attnkit::cli::VizOptions viz_options;
  CLI::App* viz = app.add_subcommand(
      "viz", "Draw which keys each query sees (attention weights) as a PNG picture");
  viz->add_option("name", name, "Sequence mechanism name or class name (see `attnkit list`)")
      ->required();
  add_model_options(viz, viz_args);
  viz->add_option("--out", viz_options.out, "PNG file to write")->required();
  viz->add_flag("--binary", viz_options.binary,
                "Black for every visible key instead of grey levels by weight");
  viz->add_flag("--grid", viz_options.grid,
                "A 1-px grid between the cells (when a cell is 4 px or more)");

  attnkit::cli::BenchOptions bench_options;
  CLI::App* bench = app.add_subcommand(
      "bench", "Time the fused attention engine against sgemm and LibTorch's composed attention");
  bench->add_option("--batch", bench_options.batch_size, "Batch size")
      ->check(kPositive)
      ->capture_default_str();
  bench->add_option("--heads", bench_options.num_heads, "Query heads")
      ->check(kPositive)
      ->capture_default_str();
  bench->add_option("--kv-heads", bench_options.num_kv_heads, "Key/value heads (divides --heads)")
      ->check(kPositive)
      ->capture_default_str();
  bench->add_option("--seq", bench_options.seq_len, "Sequence length")
      ->check(kPositive)
      ->capture_default_str();
  bench->add_option("--head-dim", bench_options.head_dim, "Head width")
      ->check(kPositive)
      ->capture_default_str();
  bench->add_flag("--causal", bench_options.causal, "Causal attention (FLOPs counted as half)");
  bench->add_option("--repeats", bench_options.repeats, "Timed repetitions (medians reported)")
      ->check(kPositive)
      ->capture_default_str();

  attnkit::cli::SparseEvalOptions sparse_options;
  CLI::App* sparse_eval = app.add_subcommand(
      "sparse-eval",
      "Density and error against dense attention of sparse masker configurations, by key length");
  sparse_eval
      ->add_option("--maskers", sparse_options.maskers,
                   "A JSON array of masker objects, or a file holding one; repeat for more "
                   "configs (default: sink 128 + local 128 + oracle_top_k 0.1, and sink 128 + "
                   "local 128 + random_sampling 0.1)")
      // One JSON value per --maskers, kept whole (CLI11 would split a "[a,b]" value at commas).
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sparse_eval
      ->add_option("--lengths", sparse_options.lengths,
                   "Key lengths, comma-separated (default: 1024,4096,16384; with --qkv the "
                   "file's Tk)")
      ->delimiter(',')
      ->check(kPositive);
  sparse_eval->add_option("--queries", sparse_options.queries, "Queries per head (random data)")
      ->check(kPositive)
      ->capture_default_str();
  sparse_eval->add_option("--batch", sparse_options.batch, "Batch size (random data)")
      ->check(kPositive)
      ->capture_default_str();
  sparse_eval->add_option("--heads", sparse_options.heads, "Query heads (random data)")
      ->check(kPositive)
      ->capture_default_str();
  sparse_eval
      ->add_option("--kv-heads", sparse_options.kv_heads,
                   "Key/value heads, dividing --heads (random data)")
      ->check(kPositive)
      ->capture_default_str();
  sparse_eval->add_option("--head-dim", sparse_options.head_dim, "Head width (random data)")
      ->check(kPositive)
      ->capture_default_str();
  sparse_eval->add_option(
      "--qkv", sparse_options.qkv,
      "torch.save'd dict {\"q\": [B,H,Tq,D], \"k\": [B,Hkv,Tk,D], \"v\": [B,Hkv,Tk,Dv]} instead "
      "of random data: each length L uses k, v[:, :, :L] and all of q");
  sparse_eval->add_option("--png", sparse_options.png,
                          "PNG file to draw error versus density into");
  sparse_eval
      ->add_option("--repeats", sparse_options.repeats, "Timed repetitions (medians reported)")
      ->check(kPositive)
      ->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    return fail(first_line(e.what()) + " (see attnkit --help)");
  }

  try {
    torch::set_num_threads(threads);
    const std::string warning = attnkit::cli::blas_warning();
    if (!warning.empty()) std::cerr << warning << std::endl;

    if (app.got_subcommand("list")) return attnkit::cli::run_list(std::cout);
    if (app.got_subcommand("bench")) {
      bench_options.seed = seed;
      return attnkit::cli::run_bench(bench_options, std::cout);
    }
    if (app.got_subcommand("viz")) {
      viz_options.config = to_config(viz_args);
      viz_options.batch_size = viz_args.batch_size;
      viz_options.seq_len = viz_args.seq_len;
      viz_options.seed = seed;
      return attnkit::cli::run_viz(name, viz_options, std::cout);
    }
    if (app.got_subcommand("sparse-eval")) {
      sparse_options.seed = seed;
      return attnkit::cli::run_sparse_eval(sparse_options, std::cout);
    }
    const attnkit::cli::MeasureOptions options = to_measure_options(args, seed);
    if (app.got_subcommand("run")) return attnkit::cli::run_one(name, options, std::cout);
    std::string error;
    const int code = attnkit::cli::run_tour(options, std::cout, error);
    std::cout.flush();
    return code == 0 ? 0 : fail(error);
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(e.what());
  } catch (...) {
    return fail("unknown exception");
  }
}
