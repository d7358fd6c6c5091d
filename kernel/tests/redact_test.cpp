#include <catch2/catch.hpp>

#include "redact.hpp"

using namespace deskfarm::kernel;

TEST_CASE("redact_url hides user-info passwords, password parameters and libpq password keywords") {
  CHECK(redact_url("postgresql://user:pw@127.0.0.1:5432/db") == "postgresql://user:***@127.0.0.1:5432/db");
  CHECK(redact_url("postgresql://127.0.0.1/db?user=u&password=s3cr%40t&sslmode=require") ==
        "postgresql://127.0.0.1/db?user=u&password=***&sslmode=require");
  CHECK(redact_url("postgres://127.0.0.1/db?PASSWORD=x&token=y") == "postgres://127.0.0.1/db?PASSWORD=***&token=***");
  CHECK(redact_url("host=127.0.0.1 user=u password='a b' dbname=d") == "host=127.0.0.1 user=u password=*** dbname=d");
  CHECK(redact_url("postgresql://user@127.0.0.1/db") == "postgresql://user@127.0.0.1/db");
  CHECK(redact_url("sqlite:var/pilot/datastore.db") == "sqlite:var/pilot/datastore.db");
  CHECK(redact_url("postgresql://127.0.0.1/db?user=u&passwordless=1") == "postgresql://127.0.0.1/db?user=u&passwordless=1");
}

TEST_CASE("url_secrets yields each password as written and decoded, and redact_secrets masks them in free text") {
  const auto secrets = url_secrets("postgresql://u:p%40ss@127.0.0.1/db?password=other");
  CHECK(secrets == std::vector<std::string>{"p%40ss", "p@ss", "other"});
  CHECK(redact_secrets("connection failed for u with p@ss (other)", secrets) == "connection failed for u with *** (***)");
  CHECK(url_secrets("sqlite:var/x.db").empty());
}
