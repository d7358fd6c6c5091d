#pragma once
/// Marks a symbol of the SDK shared library as exported (plugins are built with hidden visibility).
#define DESKFARM_SDK_API __attribute__((visibility("default")))
