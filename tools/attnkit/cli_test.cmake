# Runs the attnkit CLI once and checks its exit code (and, for errors, that stderr is exactly one
# "attnkit: error: ..." line). Usage:
#   cmake -DATTNKIT=<binary> "-DARGS=run gqa --seq 16" -DEXPECTED_EXIT=0 [-DEXPECTED_ERROR=<substring>]
#         [-DEXPECTED_PNG=<file the command must write as a PNG>] -P cli_test.cmake
separate_arguments(arg_list UNIX_COMMAND "${ARGS}")
if(DEFINED EXPECTED_PNG)
  file(REMOVE "${EXPECTED_PNG}")  # a file left by an earlier run must not pass
endif()
execute_process(COMMAND ${ATTNKIT} ${arg_list}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT "${rc}" STREQUAL "${EXPECTED_EXIT}")
  message(FATAL_ERROR "attnkit ${ARGS}: exit code ${rc}, expected ${EXPECTED_EXIT}\n"
    "stdout:\n${out}\nstderr:\n${err}")
endif()
if(EXPECTED_EXIT EQUAL 2)
  # Only the error line: no usage text, no backtrace (a BLAS warning line would also fail this).
  string(REGEX MATCHALL "\n" newlines "${err}")
  list(LENGTH newlines num_lines)
  if(NOT num_lines EQUAL 1 OR NOT err MATCHES "^attnkit: error: ")
    message(FATAL_ERROR "attnkit ${ARGS}: expected one 'attnkit: error: ...' line on stderr, got:\n"
      "${err}")
  endif()
  if(DEFINED EXPECTED_ERROR AND NOT err MATCHES "${EXPECTED_ERROR}")
    message(FATAL_ERROR "attnkit ${ARGS}: stderr does not match '${EXPECTED_ERROR}':\n${err}")
  endif()
endif()
if(DEFINED EXPECTED_PNG)
  if(NOT EXISTS "${EXPECTED_PNG}")
    message(FATAL_ERROR "attnkit ${ARGS}: did not write ${EXPECTED_PNG}\nstdout:\n${out}")
  endif()
  # The 8-byte PNG signature: \x89 P N G \r \n \x1a \n
  file(READ "${EXPECTED_PNG}" signature LIMIT 8 HEX)
  if(NOT signature STREQUAL "89504e470d0a1a0a")
    message(FATAL_ERROR "attnkit ${ARGS}: ${EXPECTED_PNG} does not start with the PNG signature "
      "(got ${signature})")
  endif()
endif()
message(STATUS "attnkit ${ARGS}: exit ${rc} as expected")
