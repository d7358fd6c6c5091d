#include "redact.hpp"

#include <algorithm>
#include <array>
#include <cctype>

#include <Poco/URI.h>

namespace deskfarm::kernel {

namespace {

constexpr std::array<std::string_view, 7> secret_keys{"password", "passwd", "pwd", "sslpassword", "token", "secret", "api_key"};

bool is_secret_key(std::string_view key) {
  return std::any_of(secret_keys.begin(), secret_keys.end(), [&](std::string_view k) {
    return key.size() == k.size() && std::equal(key.begin(), key.end(), k.begin(), [](char a, char b) {
             return std::tolower(static_cast<unsigned char>(a)) == b;
           });
  });
}

/// Calls `on(begin, end)` for each secret span of `url`: the user-info password and the values of
/// secret keys (`key=value`, separated by & ; space or the start of the query).
template <class F>
void for_each_secret(std::string_view url, F on) {
  if (const auto scheme = url.find("://"); scheme != std::string_view::npos) {
    const auto start = scheme + 3;
    const auto end = std::min(url.find_first_of("/?#", start), url.size());
    const auto authority = url.substr(start, end - start);
    if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
      if (const auto colon = authority.find(':'); colon < at) on(start + colon + 1, start + at);
    }
  }
  for (std::size_t eq = url.find('='); eq != std::string_view::npos; eq = url.find('=', eq + 1)) {
    std::size_t key_start = eq;
    while (key_start > 0 && std::string_view("?&; ").find(url[key_start - 1]) == std::string_view::npos) --key_start;
    if (!is_secret_key(url.substr(key_start, eq - key_start))) continue;
    std::size_t value_end = eq + 1;
    if (value_end < url.size() && url[value_end] == '\'') {  // libpq quoting: 'va lue'
      value_end = url.find('\'', value_end + 1);
      value_end = value_end == std::string_view::npos ? url.size() : value_end + 1;
    } else {
      value_end = std::min(url.find_first_of("&; #", value_end), url.size());
    }
    on(eq + 1, value_end);
  }
}

}  // namespace

std::string redact_url(std::string_view url) {
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  for_each_secret(url, [&](std::size_t b, std::size_t e) {
    if (e > b) spans.emplace_back(b, e);
  });
  std::sort(spans.begin(), spans.end());
  std::string out;
  std::size_t at = 0;
  for (const auto& [b, e] : spans) {
    if (b < at) continue;
    out.append(url.substr(at, b - at)).append("***");
    at = e;
  }
  return out.append(url.substr(at));
}

std::vector<std::string> url_secrets(std::string_view url) {
  std::vector<std::string> out;
  for_each_secret(url, [&](std::size_t b, std::size_t e) {
    if (e <= b) return;
    std::string raw(url.substr(b, e - b));
    if (raw.size() >= 2 && raw.front() == '\'' && raw.back() == '\'') raw = raw.substr(1, raw.size() - 2);
    std::string decoded;
    try {
      Poco::URI::decode(raw, decoded);
    } catch (...) {
      decoded.clear();  // not %-encoded after all: the raw form is enough
    }
    out.push_back(raw);
    if (!decoded.empty() && decoded != raw) out.push_back(decoded);
  });
  return out;
}

std::string redact_secrets(std::string text, const std::vector<std::string>& secrets) {
  for (const auto& secret : secrets) {
    if (secret.empty()) continue;
    for (auto at = text.find(secret); at != std::string::npos; at = text.find(secret, at + 3)) text.replace(at, secret.size(), "***");
  }
  return text;
}

}  // namespace deskfarm::kernel
