#pragma once
/// Marks a symbol of the SDK shared library as exported (plugins are built with hidden visibility).
#define DESKFARM_SDK_API __attribute__((visibility("default")))

#include <exception>
#include <string>

namespace deskfarm::sdk {

/// What an exception says, for a log line or an error answer: its what(), except for Poco's exceptions, whose what()
/// is only the class name ("Invalid SQL statement") and whose displayText() carries the database's or socket's words;
/// a write refused on a Store::read_session() says so.
DESKFARM_SDK_API std::string error_text(const std::exception& e);

}  // namespace deskfarm::sdk
