// aios/export.h — what the aios libraries export.
//
// The libraries build as shared libraries (AIOS_SHARED, the default) whose symbols are hidden
// unless a public header declares them: every public header puts its declarations between
// AIOS_EXPORT_BEGIN and AIOS_EXPORT_END, so the public API is the libraries' ABI and nothing else
// is. Their SONAME carries the ABI version (libaios_core.so.0). A static build (AIOS_SHARED=OFF)
// links the same code into the application.
#pragma once

#define AIOS_EXPORT_BEGIN _Pragma("GCC visibility push(default)")
#define AIOS_EXPORT_END _Pragma("GCC visibility pop")
// For a friend function first declared inside its class, which the pragma does not reach.
#define AIOS_EXPORT __attribute__((visibility("default")))
