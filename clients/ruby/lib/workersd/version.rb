# frozen_string_literal: true

module Workersd
  VERSION = "0.1.0"
end
