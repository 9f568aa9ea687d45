# Seed 003_0311d01104af4138.txt, lines 85-86 (step 1, the body of `python - <<'PY'`), copied verbatim.
# tests/seeds.rs runs it as it is: it prints a token for the server's JWT_SECRET=change-me.
import jwt, time
print(jwt.encode({"sub":"u1","iat":int(time.time())}, "change-me", algorithm="HS256"))
