#pragma once
// Secrets never reach a log line, an error message, /status or `deskfarm check` output.
#include <string>
#include <string_view>
#include <vector>

namespace deskfarm::kernel {

/// `url` with every password shown as "***": the user-info password (`postgresql://user:PW@host/db`) and
/// the value of each password-like parameter or libpq keyword (`?user=u&password=PW`, `password=PW`;
/// also passwd, pwd, sslpassword, token, secret, api_key). Anything else is kept, so the URL stays useful.
std::string redact_url(std::string_view url);

/// The secret values a URL carries (as written and %-decoded), to mask them in free text such as a
/// driver's error message that quotes the connection.
std::vector<std::string> url_secrets(std::string_view url);

/// `text` with every occurrence of every non-empty secret replaced by "***".
std::string redact_secrets(std::string text, const std::vector<std::string>& secrets);

}  // namespace deskfarm::kernel
