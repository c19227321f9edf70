// Catch2 for files that also include LibTorch headers: c10's logging defines a glog-style CHECK
// macro that aborts; it is dropped here so CHECK is Catch's.
#pragma once

#include <ATen/ATen.h>
#undef CHECK
#include <catch2/catch.hpp>
