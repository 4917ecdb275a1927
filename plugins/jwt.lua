-- plugins/jwt.lua: authenticate sockets with HS256 JSON Web Tokens.
--   jwt = { secret = os.getenv("HERALD_JWT_SECRET"), param = "token",
--           id_claim = "sub", leeway_s = 0, required = true,
--           assigns_claims = nil }          -- nil: every claim
-- The token comes from the connect params (?token=...) or the Phoenix
-- auth-token subprotocol (phoenix.js `authToken`). Only alg "HS256" is
-- accepted. Refusals: "missing token", "invalid token", "token expired".
local plugin = {
  options = {
    secret = { type = "string", required = true, nonempty = true, secret = true },
    param = { type = "string", nonempty = true, default = "token" },
    id_claim = { type = "string", nonempty = true, default = "sub" },
    leeway_s = { type = "number", min = 0, default = 0 },
    required = { type = "boolean", default = true },
    assigns_claims = { type = "list", items = "string" }, -- none: every claim
  },
}

function plugin.setup(options)
  local secret, param, id_claim = options.secret, options.param, options.id_claim
  local leeway, required, copy = options.leeway_s, options.required, options.assigns_claims

  local json, crypto = herald.json, herald.crypto

  -- The decoded JSON object in a base64url segment, or nil.
  local function segment(s)
    local text = crypto.b64_decode(s)
    local v = text and json.decode(text)
    if type(v) ~= "table" or v[1] ~= nil then return nil end -- an object, not an array
    return v
  end

  -- The claims of a valid token, or nil and the refusal reason.
  local function verify(token)
    local h64, p64, s64 = token:match("^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]+)$")
    if not h64 then return nil, "invalid token" end
    local header = segment(h64)
    if not header or header.alg ~= "HS256" then return nil, "invalid token" end
    local expected = crypto.b64url_encode(crypto.hmac_sha256(secret, h64 .. "." .. p64))
    if not crypto.equal(expected, s64) then return nil, "invalid token" end
    local claims = segment(p64)
    if not claims then return nil, "invalid token" end
    local exp, nbf = claims.exp, claims.nbf
    if exp ~= nil and type(exp) ~= "number" then return nil, "invalid token" end
    if nbf ~= nil and type(nbf) ~= "number" then return nil, "invalid token" end
    local now = herald.now()
    if exp and exp <= now - leeway then return nil, "token expired" end
    if nbf and nbf > now + leeway then return nil, "invalid token" end
    return claims
  end

  -- The identity as a string; integral numbers without an exponent.
  local function identity(v)
    if type(v) == "string" then return v ~= "" and v or nil end
    if type(v) == "number" and v == v then
      if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%.0f"):format(v) end
      return tostring(v)
    end
    return nil
  end

  local M = {}
  function M.authenticate(req)
    local token = req.params and req.params[param]
    if token == nil or token == "" then token = req.token end
    if token == nil or token == "" then
      if required then return nil, "missing token" end
      return -- no opinion: other hooks decide
    end
    local claims, why = verify(token)
    if not claims then return nil, why end
    local id = identity(claims[id_claim])
    if not id then return nil, "invalid token" end
    local assigns = {}
    if copy then
      for _, k in ipairs(copy) do assigns[k] = claims[k] end
    else
      for k, v in pairs(claims) do assigns[k] = v end
    end
    return { id = id, assigns = assigns }
  end
  return M
end

return plugin
