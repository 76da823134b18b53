// Precompiled header for the test binary.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <attnkit/attnkit.h>
